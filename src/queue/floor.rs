//! Claim floors: where a claimer's walk of each account's waiting jobs starts.
//!
//! A job that is claimed leaves its entry in the claim index behind, and vacuum removes no entry a snapshot still
//! open may need. So while a transaction stays open (a long report, a forgotten session), a claim that walks an
//! account's jobs from the start passes every job claimed since that transaction began, each a heap fetch to find
//! it gone, and grows slower by the minute: at 1 000 jobs/s, 34 ms a claim after 150 s, and the claimer falls
//! behind. Without such a transaction the first walk past a dead entry marks it, and later walks skip it cheaply.
//!
//! So a claimer remembers, per account and priority, how far its claims have taken jobs (less [`MARGIN`], for
//! enqueues that commit a little after jobs enqueued later), and once walks from the start have proved slow
//! ([`SLOW_WALKS`] in a row over [`SLOW`], each after the first counted as passing dead entries, see
//! [`DEAD_READS`]) it starts its walks there. A job that becomes waiting behind that point
//! (a lane's next job released without a taker, a job handed back or rescued, an enqueue committed more than the
//! margin late) is found by the next walk from the start, which comes at least every [`FULL_WALK_EVERY`], or less
//! often when it is slow, so that the walks from the start take at most a twentieth of the time. A worker's scout
//! makes those walks beside its claims (see [`super::scout`]), and a claim walks from the start only when the
//! scout saw a job behind a floor, or when no scout reported in time. The list of accounts with work is read with
//! those walks only (see `FairShare::set_active`), so a new account's first jobs wait as long. That is the price,
//! paid only while walks from the start are slow; otherwise every claim walks from the start, as before.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

/// Where a claimer's walks of one account's priority start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Floor {
    /// The account.
    pub account_id: String,
    /// The priority.
    pub priority: i16,
    /// Walks of this priority start at this `run_at`.
    pub at: DateTime<Utc>,
}

/// How far behind the furthest job claimed a walk starts: an enqueue whose transaction began before a claimed job's
/// and committed after its claim is still found, if it committed within this.
pub const MARGIN: Duration = Duration::from_secs(2);

/// A walk from the start that takes this long means dead index entries are piling up: walks start at the floors.
pub const SLOW: Duration = Duration::from_millis(20);

/// How many walks from the start in a row must be slow before claims walk from floors: one slow walk is as likely
/// a busy machine as dead entries, which make every walk slow.
pub const SLOW_WALKS: u32 = 8;

/// The longest a claimer walks from its floors before it walks from the start again (at least; see [`Floors`]).
pub const FULL_WALK_EVERY: Duration = Duration::from_secs(1);

/// How much longer than its own duration a slow walk from the start waits for the next one.
const FULL_WALK_SPACING: u32 = 20;

/// A walk from the start that read at least this many index entries of `job`, beyond [`READS_PER_JOB`] per job it
/// took, passed dead ones kept by a snapshot: a walk is slow for them only then. A claim over a large backlog for
/// many accounts is slow too, and reads the entries of jobs claimed a moment ago that no walk could remove yet (a
/// run with a 1 000 000-job backlog and 100 busy accounts read up to 50 per job taken), but floors would not make
/// it faster and would delay the jobs of accounts new to the list (p50 start delay 60 ms → 110–1 250 ms there).
/// Under a snapshot held open, a walk from the start that takes 20 ms reads tens of thousands.
pub const DEAD_READS: i64 = 10_000;

/// Index entries a walk may read per job it takes without counting as passing dead ones (see [`DEAD_READS`]).
pub const READS_PER_JOB: i64 = 100;

/// How long after a walk from the start that took `took` the next one comes: at least [`FULL_WALK_EVERY`], and
/// [`FULL_WALK_SPACING`] times its own time when longer, so that those walks take at most a twentieth of the time.
pub fn scout_every(took: Duration) -> Duration {
    FULL_WALK_EVERY.max(took * FULL_WALK_SPACING)
}

/// A claimer's floors for one queue: per account, per priority, the `run_at` its walks start from.
#[derive(Debug, Default)]
pub struct Floors {
    by_account: HashMap<String, BTreeMap<i16, DateTime<Utc>>>,
    /// Walks start at the floors until then; `None`: every walk starts from the start.
    until: Option<Instant>,
    /// Slow walks from the start in a row.
    slow: u32,
}

/// Whether a walk from the start that read `read` index entries of `job` and took `taken` jobs passed dead entries
/// (see [`DEAD_READS`]).
pub fn passed_dead(read: i64, taken: usize) -> bool {
    let taken = i64::try_from(taken).unwrap_or(i64::MAX);
    read >= DEAD_READS.saturating_add(taken.saturating_mul(READS_PER_JOB))
}

impl Floors {
    /// Whether walks start at the floors at `now` (else the claim walks from the start).
    pub fn active(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }

    /// Walks start at the floors until `until`, as if walks from the start had proved slow (for tests and
    /// diagnostics: dead entries are slow to make).
    pub fn engage(&mut self, until: Instant) {
        self.until = Some(until);
        self.slow = SLOW_WALKS;
    }

    /// Whether the last walk from the start was slow: claims walk from the floors, or will once it is their turn.
    pub fn engaged(&self) -> bool {
        self.until.is_some()
    }

    /// Whether the next walk from the start should count the index entries it reads: after a slow one, so that the
    /// next tells dead entries from a merely large claim (see [`DEAD_READS`]).
    pub fn counts_reads(&self) -> bool {
        self.slow > 0 || self.until.is_some()
    }

    /// The claim statement's ranges per account (see the migration of `job_claim_walk`), as JSON: for each account
    /// with floors, `lo`, `hi` and `t`, the priorities' ranges in priority order, each walked from its `t`. Empty when
    /// walks start from the start.
    pub fn ranges(&self, now: Instant) -> Value {
        if !self.active(now) {
            return Value::Object(Map::new());
        }
        let mut out = Map::new();
        for (account, floors) in &self.by_account {
            let (mut lo, mut hi, mut from) = (Vec::new(), Vec::new(), Vec::new());
            // The next priority not yet covered; `None` once every one is.
            let mut next = Some(i16::MIN);
            for (&priority, at) in floors {
                // The priorities between two with floors are walked whole: nothing was claimed there yet.
                if let Some(n) = next.filter(|&n| n < priority) {
                    lo.push(n);
                    hi.push(priority - 1);
                    from.push("-infinity".to_owned());
                }
                lo.push(priority);
                hi.push(priority);
                from.push(at.to_rfc3339());
                next = priority.checked_add(1);
            }
            if let Some(n) = next {
                lo.push(n);
                hi.push(i16::MAX);
                from.push("-infinity".to_owned());
            }
            out.insert(account.clone(), json!({ "lo": lo, "hi": hi, "t": from }));
        }
        Value::Object(out)
    }

    /// Records a claim at `now`: `full` when it walked from the start, `took` its time (with the list of accounts
    /// it read first, which walks from the start too), `dead` whether it passed dead entries when its reads were
    /// counted ([`passed_dead`]), and `jobs` the account, priority and `run_at` of each job it took. A walk from the
    /// start forgets the floors first (it found any job waiting behind them), and decides whether the next walks
    /// start at the floors.
    pub fn record<'a>(
        &mut self,
        now: Instant,
        full: bool,
        took: Duration,
        dead: Option<bool>,
        jobs: impl IntoIterator<Item = (&'a str, i16, DateTime<Utc>)>,
    ) {
        if full {
            self.by_account.clear();
            // A walk whose reads were counted is slow only if it passed dead entries; the first slow one is not
            // counted (that costs a transaction), and the next tells.
            let slow = took >= SLOW && dead != Some(false);
            self.slow = if slow { self.slow.saturating_add(1) } else { 0 };
            // Once engaged, one slow walk from the start keeps it so; a fast one ends it.
            let engage = self.slow >= SLOW_WALKS || (self.until.is_some() && self.slow > 0);
            self.until = engage.then(|| now + scout_every(took));
        }
        let margin = chrono::Duration::from_std(MARGIN).unwrap_or_default();
        for (account, priority, run_at) in jobs {
            let floor = run_at - margin;
            let floors = self.by_account.entry(account.to_owned()).or_default();
            let at = floors.entry(priority).or_insert(floor);
            if *at < floor {
                *at = floor;
            }
        }
    }

    /// The floors for the scout (see [`super::scout`]): each account's priorities with the `run_at` their walks start
    /// from; `None` while claims walk from the start, when there is nothing to scout for.
    pub fn floors(&self) -> Option<Vec<Floor>> {
        self.until?;
        Some(
            self.by_account
                .iter()
                .flat_map(|(account, floors)| {
                    floors.iter().map(|(&priority, &at)| Floor {
                        account_id: account.clone(),
                        priority,
                        at,
                    })
                })
                .collect(),
        )
    }

    /// Records a walk from the start that the scout made beside the claims at `now`: `took` its time, `dead` whether
    /// it passed dead entries, `behind` whether a job waits behind a floor. A fast one, or one that passed no dead
    /// entries, ends the floors as a claim's would. Otherwise claims keep walking from the floors until twice the
    /// scout's spacing from now (so a scout that stops reporting leaves the walks from the start to the claims
    /// again), except when a job waits behind a floor: then the next claim walks from the start and takes it.
    pub fn scouted(&mut self, now: Instant, took: Duration, dead: bool, behind: bool) {
        if self.until.is_none() {
            return;
        }
        if took < SLOW || !dead {
            self.slow = 0;
            self.until = None;
            return;
        }
        self.until = Some(if behind { now } else { now + scout_every(took) * 2 });
    }

    /// Forgets the floors of accounts no longer listed as having work.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.by_account.retain(|a, _| keep(a));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn job(account: &str, priority: i16, secs: i64) -> (&str, i16, DateTime<Utc>) {
        (account, priority, Utc.timestamp_opt(1_000_000 + secs, 0).unwrap())
    }

    /// The floor a job of [`job`] at `secs` leaves: its `run_at` less the margin.
    fn floor_at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_000_000 + secs, 0).unwrap() - chrono::Duration::from_std(MARGIN).unwrap()
    }

    fn at(secs: i64) -> String {
        floor_at(secs).to_rfc3339()
    }

    /// Engages the floors at `now` with SLOW_WALKS walks from the start that took `took` each.
    fn engage(f: &mut Floors, now: Instant, took: Duration) {
        for _ in 0..SLOW_WALKS {
            f.record(now, true, took, None, []);
        }
    }

    /// Walks start from the floors only after SLOW_WALKS slow walks from the start in a row, and stop at a fast one.
    #[test]
    fn floors_engage_after_slow_walks_in_a_row() {
        let mut f = Floors::default();
        let now = Instant::now();
        let slow = SLOW * 2;
        for _ in 0..SLOW_WALKS - 1 {
            f.record(now, true, slow, None, []);
            assert!(!f.active(now));
        }
        f.record(now, true, SLOW / 2, None, []);
        for _ in 0..SLOW_WALKS - 1 {
            f.record(now, true, slow, None, []);
        }
        assert!(!f.active(now), "a fast walk starts the count again");
        f.record(now, true, slow, None, []);
        assert!(f.active(now));
        assert!(!f.active(now + FULL_WALK_EVERY), "the next walk from the start is due");
        // Engaged, one slow walk from the start keeps it so; a fast one ends it.
        let later = now + FULL_WALK_EVERY;
        f.record(later, true, slow, None, []);
        assert!(f.active(later));
        f.record(later, true, SLOW / 2, None, []);
        assert!(!f.active(later) && !f.engaged());
        assert_eq!(f.ranges(later), serde_json::json!({}));
    }

    /// Slow walks from the start that read about what they took (a large claim, not dead entries) never engage the
    /// floors, and one such walk ends them; slow walks past dead entries engage them as before.
    #[test]
    fn only_walks_past_dead_entries_engage_the_floors() {
        let mut f = Floors::default();
        let now = Instant::now();
        let slow = SLOW * 2;
        assert!(!f.counts_reads());
        f.record(now, true, slow, None, []);
        assert!(f.counts_reads(), "after a slow walk the next one is counted");
        let large = Some(passed_dead(READS_PER_JOB * 500 + DEAD_READS - 1, 500));
        for _ in 0..SLOW_WALKS * 2 {
            f.record(now, true, slow, large, []);
        }
        assert!(
            !f.active(now) && !f.counts_reads(),
            "a large claim is no reason for floors"
        );
        f.record(now, true, slow, None, []);
        let dead = Some(passed_dead(DEAD_READS + READS_PER_JOB * 10, 10));
        for _ in 0..SLOW_WALKS {
            f.record(now, true, slow, dead, []);
        }
        assert!(f.active(now));
        f.record(now, true, slow, Some(passed_dead(200, 100)), []);
        assert!(!f.engaged(), "a counted walk without dead entries ends them");
    }

    /// The scout's walks keep the claims on their floors while they pass dead entries, end the floors when fast or
    /// past none, and send the next claim from the start when a job waits behind a floor.
    #[test]
    fn the_scouts_walks_keep_end_or_step_behind_the_floors() {
        let mut f = Floors::default();
        let now = Instant::now();
        let walk = Duration::from_millis(200);
        f.scouted(now, walk, true, false);
        assert!(
            !f.engaged() && f.floors().is_none(),
            "nothing to scout for before the floors engage"
        );
        engage(&mut f, now, SLOW * 2);
        f.record(now, false, SLOW, None, [job("a", 5, 10), job("a", 2, 7)]);
        let floor = |priority, secs| Floor {
            account_id: "a".to_owned(),
            priority,
            at: floor_at(secs),
        };
        assert_eq!(f.floors(), Some(vec![floor(2, 7), floor(5, 10)]));

        // Past the claims' own next walk from the start, up to twice the scout's spacing.
        let later = now + Duration::from_secs(60);
        f.scouted(later, walk, true, false);
        assert_eq!(scout_every(walk), Duration::from_secs(4));
        assert!(f.active(later + Duration::from_millis(7_900)));
        assert!(
            !f.active(later + Duration::from_secs(8)),
            "a scout that stops reporting leaves it to the claims"
        );
        f.scouted(later, walk, true, true);
        assert!(
            !f.active(later) && f.engaged(),
            "a job behind a floor: the next claim walks from the start"
        );
        assert!(f.floors().is_some());

        f.scouted(later, walk, false, false);
        assert!(
            !f.engaged() && f.floors().is_none(),
            "a walk past no dead entries ends the floors"
        );
        engage(&mut f, now, SLOW * 2);
        f.scouted(later, SLOW / 2, true, false);
        assert!(!f.engaged(), "so does a fast one");
    }

    /// A slow walk from the start waits twenty times its own time for the next one.
    #[test]
    fn a_slower_walk_from_the_start_comes_less_often() {
        let mut f = Floors::default();
        let now = Instant::now();
        engage(&mut f, now, Duration::from_millis(200));
        assert!(f.active(now + Duration::from_millis(3_900)));
        assert!(!f.active(now + Duration::from_secs(4)));
    }

    /// Per account, each priority with a floor is walked from it (the furthest job claimed less the margin), the
    /// priorities around it whole; a walk from the start forgets the floors.
    #[test]
    fn ranges_walk_priorities_from_their_floors() {
        let mut f = Floors::default();
        let now = Instant::now();
        engage(&mut f, now, SLOW);
        f.record(
            now,
            false,
            SLOW,
            None,
            [job("a", 5, 10), job("a", 5, 30), job("a", 2, 7), job("b", 5, 3)],
        );
        f.record(now, false, SLOW, None, [job("a", 5, 20)]);
        let r = f.ranges(now);
        assert_eq!(
            r["a"],
            serde_json::json!({
                "lo": [i16::MIN, 2, 3, 5, 6],
                "hi": [1, 2, 4, 5, i16::MAX],
                "t": ["-infinity", at(7), "-infinity", at(30), "-infinity"],
            })
        );
        assert_eq!(
            r["b"],
            serde_json::json!({"lo": [i16::MIN, 5, 6], "hi": [4, 5, i16::MAX], "t": ["-infinity", at(3), "-infinity"]})
        );
        f.retain(|a| a == "a");
        assert!(f.ranges(now).get("b").is_none());
        f.record(now, true, SLOW, None, [job("a", 0, 1)]);
        assert_eq!(
            f.ranges(now)["a"],
            serde_json::json!({"lo": [i16::MIN, 0, 1], "hi": [-1, 0, i16::MAX], "t": ["-infinity", at(1), "-infinity"]})
        );
    }
}

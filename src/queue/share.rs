//! Fair share between accounts within a queue (CONTRACT §12): which accounts have waiting work, and how many jobs
//! of each one claim takes.
//!
//! Each claimer keeps a [`FairShare`] per queue and shares out every claim by deficit round robin: an account is
//! credited its weight's part of the claim, takes whole jobs from its credit, and the turn rotates, so an account
//! whose part is below one job still gets one in turn. Whatever the accounts in turn do not take (they ran out, or
//! a limit holds them) goes to the next unlimited accounts in turn, so an account alone gets the whole claim.
//! Claimers share nothing but the database: every claimer shares out fairly, so all of them together do.
//!
//! Limits are checked by counting, not by holding anything while jobs run: a claim that serves a limited account
//! locks the account's `account_share` row for the length of that claim, then (with a snapshot taken after the
//! lock) counts the account's leased jobs and its starts of the last second, and takes no more than the rest.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::{PgConnection, PgExecutor};

use super::floor::{Floor, Floors};
use super::{Job, Result};

/// How long a claimer trusts its list of accounts with waiting work. A new account's first jobs wait at most this
/// long (and a claim) for their first turn; the list costs one index descent per account to read.
pub const REFRESH: Duration = Duration::from_millis(50);

/// The most accounts one claim serves (each costs the claim an index walk); the turn brings the others round.
pub const MAX_ACCOUNTS: usize = 32;

/// An account with waiting work in a queue.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Active {
    /// The account.
    pub account_id: String,
    /// Its weight (default 1).
    pub weight: i32,
    /// It has a limit on this queue or on some kind: its claims count first.
    pub limited: bool,
}

/// What a limited account may still start right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowance {
    /// Jobs of this queue it may still lease; `None`: no limit on the queue.
    pub queue: Option<i64>,
    /// For each limited kind, jobs it may still start (the lesser of its running and its rate limit).
    pub kinds: HashMap<String, i64>,
}

/// One part of a claim: up to `q` jobs of account `a` of kinds `k`, in claim order; a unit with `f` also takes
/// what other units left of the claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unit {
    /// Account.
    pub a: String,
    /// Kinds.
    pub k: Vec<String>,
    /// Quota.
    pub q: i64,
    /// Takes the claim's leftovers.
    pub f: bool,
}

/// What one walk of the scout found (see [`super::scout`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scouted {
    /// The accounts with waiting work in the queue.
    pub active: Vec<Active>,
    /// Some job the claimer could take waits behind one of its floors.
    pub behind: bool,
    /// How long the walk took.
    pub took: Duration,
    /// Index entries of `job` it read.
    pub reads: i64,
}

/// A claimer's share-out state for one queue.
#[derive(Debug, Default)]
pub struct FairShare {
    active: Vec<Active>,
    read_at: Option<Instant>,
    blind: bool,
    credit: HashMap<String, f64>,
    turn: usize,
    floors: Floors,
}

impl FairShare {
    /// No accounts known yet: the first claim reads them.
    pub fn new() -> Self {
        FairShare::default()
    }

    /// Whether the list of accounts must be read again before the next claim. While walks start at the floors,
    /// not until the next walk from the start: reading the list walks from the start too.
    pub fn stale(&self, now: Instant) -> bool {
        self.read_at
            .is_none_or(|at| self.walks_from_start(now) && now.duration_since(at) >= REFRESH)
    }

    /// Forgets the list, so the next claim reads it first.
    pub fn invalidate(&mut self) {
        self.read_at = None;
        self.blind = false;
    }

    /// A claim found nothing: accounts have come or gone. The next claim (a wake-up's, typically) finds the
    /// accounts with work itself, in its own statement, instead of reading the list first: one round trip from an
    /// enqueue to its start. It serves them in account order, not in turn, for that one claim; the list is read
    /// before the claim after it.
    /// While walks start at the floors, the list stays as it is instead, until the next walk from the start.
    pub fn idle(&mut self) {
        if self.floors.active(Instant::now()) && !self.active.is_empty() {
            return;
        }
        self.active.clear();
        self.read_at = None;
        self.blind = true;
    }

    /// Whether the next claim goes without the list (see [`FairShare::idle`]); asking uses the chance up.
    pub fn take_blind(&mut self) -> bool {
        std::mem::take(&mut self.blind)
    }

    /// Replaces the list of accounts with waiting work, read at `now`; credits of accounts no longer there go.
    ///
    /// While claims walk from floors (see [`super::floor`]) the list is read only with each walk from the start,
    /// and an account found without work at that moment (its jobs all just claimed) may have work a moment later.
    /// So then the list only grows: accounts no longer found stay, each a cheap walk from its floor, until a walk
    /// from the start is fast again.
    pub fn set_active(&mut self, mut active: Vec<Active>, now: Instant) {
        if self.floors.engaged() {
            let gone: Vec<Active> = self
                .active
                .drain(..)
                .filter(|old| !active.iter().any(|x| x.account_id == old.account_id))
                .collect();
            active.extend(gone);
        }
        self.credit.retain(|a, _| active.iter().any(|x| &x.account_id == a));
        self.floors.retain(|a| active.iter().any(|x| x.account_id == a));
        self.active = active;
        self.read_at = Some(now);
        self.blind = false;
        if self.turn >= self.active.len() {
            self.turn = 0;
        }
    }

    /// Whether a claim starting at `now` walks from the start (else from the floors; see [`super::floor`]). A
    /// claimer that knows no account with work walks from the start: it has no floor to walk from.
    pub fn walks_from_start(&self, now: Instant) -> bool {
        !self.floors.active(now) || self.active.is_empty()
    }

    /// The ranges a claim at `now` walks per account (see [`Floors::ranges`]).
    pub fn ranges(&self, now: Instant) -> serde_json::Value {
        self.floors.ranges(now)
    }

    /// Claims walk from floors until `until` (see [`Floors::engage`]).
    pub fn walk_from_floors_until(&mut self, until: Instant) {
        self.floors.engage(until);
    }

    /// Whether the next walk from the start should count its reads (see [`Floors::counts_reads`]).
    pub fn counts_reads(&self) -> bool {
        self.floors.counts_reads()
    }

    /// Records a claim (see [`Floors::record`]); `reads`: the index entries a walk from the start read, when they
    /// were counted.
    pub fn walked(&mut self, now: Instant, full: bool, took: Duration, reads: Option<i64>, jobs: &[Job]) {
        let dead = reads.map(|read| super::floor::passed_dead(read, jobs.len()));
        let claimed = jobs.iter().map(|j| (j.account_id.as_str(), j.priority, j.run_at));
        self.floors.record(now, full, took, dead, claimed);
    }

    /// The floors for this claimer's scout (see [`super::scout`]); `None` while claims walk from the start.
    pub fn scout_floors(&self) -> Option<Vec<Floor>> {
        self.floors.floors()
    }

    /// Takes the scout's report of a walk from the start at `now` (see [`Floors::scouted`]): the list of accounts
    /// with work it read, and whether claims go on walking from the floors.
    pub fn scouted(&mut self, now: Instant, report: Scouted) {
        let dead = super::floor::passed_dead(report.reads, 0);
        self.floors.scouted(now, report.took, dead, report.behind);
        // Once the floors end, the next claim walks from the start and reads the list itself.
        if self.floors.engaged() {
            self.set_active(report.active, now);
        }
    }

    /// The accounts with waiting work, as last read.
    pub fn active(&self) -> &[Active] {
        &self.active
    }

    /// Shares out a claim of `limit` jobs of `kinds`: one unit per account (per limited kind, for an account with
    /// kind limits), in turn order, each with its quota. `allowances` holds what each limited account may still
    /// start; a limited account missing from it gets nothing.
    pub fn plan(&mut self, limit: i64, kinds: &[String], allowances: &HashMap<String, Allowance>) -> Vec<Unit> {
        let n = self.active.len();
        if n == 0 || limit <= 0 {
            return Vec::new();
        }
        let total: f64 = self.active.iter().map(|a| f64::from(a.weight.max(1))).sum();
        let start = self.turn % n;
        let order: Vec<usize> = (start..n).chain(0..start).collect();
        let mut quotas = vec![0i64; n];
        let mut left = limit;
        for &i in &order {
            let account = &self.active[i];
            let credit = self.credit.entry(account.account_id.clone()).or_insert(0.0);
            // At most one claim's worth: an account that could not use its credit for a while (a limit held it)
            // does not come back with a burst.
            *credit = (*credit + limit as f64 * f64::from(account.weight.max(1)) / total).min(limit as f64);
            quotas[i] = (credit.floor() as i64).clamp(0, left);
            left -= quotas[i];
        }
        // The seats the fractions left over go to the unlimited accounts with the most credit left (largest
        // remainder), so a claim is shared out whole; their credit goes below zero until their next part.
        let mut by_rest: Vec<usize> = order.iter().copied().filter(|&i| !self.active[i].limited).collect();
        let rest = |i: usize| self.credit.get(&self.active[i].account_id).copied().unwrap_or(0.0) - quotas[i] as f64;
        by_rest.sort_by(|&x, &y| rest(y).total_cmp(&rest(x)));
        for i in by_rest.into_iter().take(usize::try_from(left).unwrap_or(0)) {
            quotas[i] += 1;
        }
        // At most MAX_ACCOUNTS accounts with a part per claim, in turn order: each costs the claim an
        // index walk. The others keep their credit for a later claim, and the turn goes on after the last one
        // served, so every account comes round within a few claims however many there are.
        let served: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&i| quotas[i] > 0)
            .take(MAX_ACCOUNTS)
            .collect();
        self.turn = served.last().map_or(start + 1, |&i| i + 1) % n;
        for (i, q) in quotas.iter_mut().enumerate() {
            if !served.contains(&i) {
                *q = 0;
            }
        }
        // What the accounts left for a later claim would have had goes to the unlimited ones served now, by
        // weight: their credit goes below zero, so the next claims serve the others first.
        let unlimited: Vec<usize> = served.iter().copied().filter(|&i| !self.active[i].limited).collect();
        let weight = |i: usize| i64::from(self.active[i].weight.max(1));
        let spare = limit - quotas.iter().sum::<i64>();
        let spare_weight: i64 = unlimited.iter().map(|&i| weight(i)).sum();
        if spare > 0 && spare_weight > 0 {
            for &i in &unlimited {
                quotas[i] += spare * weight(i) / spare_weight;
            }
            let rest = limit - quotas.iter().sum::<i64>();
            for &i in unlimited.iter().take(usize::try_from(rest).unwrap_or(0)) {
                quotas[i] += 1;
            }
        }
        let everyone = order;
        let order: Vec<usize> = everyone.iter().copied().filter(|i| served.contains(i)).collect();
        let mut units = Vec::with_capacity(n);
        for &i in &order {
            let account = &self.active[i];
            let quota = quotas[i];
            if !account.limited {
                units.push(Unit {
                    a: account.account_id.clone(),
                    k: kinds.to_vec(),
                    q: quota,
                    f: true,
                });
                continue;
            }
            let Some(allow) = allowances.get(&account.account_id) else {
                continue;
            };
            let mut queue_left = allow.queue.unwrap_or(i64::MAX).max(0);
            for kind in kinds {
                if let Some(&kind_left) = allow.kinds.get(kind) {
                    let q = quota.min(kind_left.max(0)).min(queue_left);
                    queue_left -= q;
                    if q > 0 {
                        units.push(Unit {
                            a: account.account_id.clone(),
                            k: vec![kind.clone()],
                            q,
                            f: false,
                        });
                    }
                }
            }
            let free: Vec<String> = kinds
                .iter()
                .filter(|k| !allow.kinds.contains_key(*k))
                .cloned()
                .collect();
            let q = quota.min(queue_left);
            if !free.is_empty() && (q > 0 || allow.queue.is_none()) {
                units.push(Unit {
                    a: account.account_id.clone(),
                    k: free,
                    q,
                    // Leftovers go to it only when nothing bounds its jobs of the queue.
                    f: allow.queue.is_none(),
                });
            }
        }
        // Every other unlimited account may take what the claim still has room for, after those served, in turn
        // order: a claim is never short while any account has work (the big backlog outside this claim's turn, say).
        // The claim walks these only when it is short, and stops at the first that fills it.
        for &i in everyone
            .iter()
            .filter(|&&i| !served.contains(&i) && !self.active[i].limited)
        {
            units.push(Unit {
                a: self.active[i].account_id.clone(),
                k: kinds.to_vec(),
                q: 0,
                f: true,
            });
        }
        units
    }

    /// Settles the credits after a claim that shared out `units` and took `taken` jobs per account: an account's
    /// credit pays for what it took within its quota, and an account that took less than its quota (it ran out,
    /// or a limit held it) starts over, so credit never piles up for an account that cannot use it.
    pub fn settle(&mut self, units: &[Unit], taken: &HashMap<&str, i64>) {
        let mut quotas: HashMap<&str, i64> = HashMap::new();
        for u in units {
            *quotas.entry(u.a.as_str()).or_default() += u.q;
        }
        for account in &self.active {
            let id = account.account_id.as_str();
            let quota = quotas.get(id).copied().unwrap_or(0);
            let got = taken.get(id).copied().unwrap_or(0);
            if let Some(credit) = self.credit.get_mut(id) {
                if got < quota {
                    *credit = 0.0;
                } else {
                    *credit -= quota as f64;
                }
            }
        }
    }
}

/// The accounts with waiting jobs in `queue`, with their weights, found by skipping from one account to the next
/// in the claim index: one index descent per account, however many jobs each has waiting.
pub async fn active_accounts<'e>(exec: impl PgExecutor<'e>, queue: &str) -> Result<Vec<Active>> {
    Ok(sqlx::query_as(&format!(
        r#"
        with recursive {ACCOUNTS_WITH_WORK}
        select a.account_id,
               coalesce(s.weight, 1) as weight,
               exists (select 1 from account_queue_limit l where l.account_id = a.account_id and l.queue = $1)
                   or exists (select 1 from account_kind_limit k where k.account_id = a.account_id) as limited
        from active a
        left join account_share s on s.account_id = a.account_id
        where a.account_id is not null
        "#
    ))
    .bind(queue)
    .fetch_all(exec)
    .await?)
}

/// The accounts with waiting jobs in queue `$1`, as the recursive CTE `active(account_id)` (its last row is null):
/// one descent of the claim index per account, skipping from each account to the next, never walking a backlog.
pub(super) const ACCOUNTS_WITH_WORK: &str = r#"active(account_id) as (
            (select j.account_id from job j
             where j.queue = $1 and j.state in ('available', 'scheduled', 'retryable')
             order by j.account_id
             limit 1)
            union all
            select (select j.account_id from job j
                    where j.queue = $1 and j.state in ('available', 'scheduled', 'retryable')
                      and j.account_id > a.account_id
                    order by j.account_id
                    limit 1)
            from active a
            where a.account_id is not null
        )"#;

/// Locks the share rows of `accounts` for the caller's transaction (in id order, so two claimers never deadlock):
/// the claims of a limited account count and take one after the other.
pub async fn lock_limited(conn: &mut PgConnection, accounts: &[&str]) -> Result<()> {
    sqlx::query("select 1 from account_share where account_id = any($1) order by account_id for update")
        .bind(accounts)
        .execute(conn)
        .await?;
    Ok(())
}

/// What each of `accounts` may still start in `queue`, counted now: its limit on the queue less its leased jobs
/// there, and per limited kind the lesser of its running limit less its leased jobs of the kind and its rate less
/// its starts since one second before this transaction began (the `started_at` of the jobs it claims).
///
/// Why no one-second window ever holds more starts than the rate: every claim records its starts at its own
/// transaction's start (which is their `started_at`), and counts, after taking the lock, every start recorded at or
/// after that time less one second. Of the claims whose starts fall in one window, the last to take the lock began
/// at most a second after any of them, so it counted all the others' starts and took no more than the rest.
pub async fn allowances(conn: &mut PgConnection, accounts: &[&str], queue: &str) -> Result<HashMap<String, Allowance>> {
    let rows: Vec<(String, Option<String>, i64)> = sqlx::query_as(
        r#"
        select l.account_id, null::text as kind,
               l.max_running - (select count(*) from job j
                                where j.account_id = l.account_id and j.queue = l.queue
                                  and j.leased_until is not null) as left_now
        from account_queue_limit l
        where l.account_id = any($1) and l.queue = $2
        union all
        select k.account_id, k.kind,
               least(
                   coalesce(k.max_running - (select count(*) from job j
                                             where j.account_id = k.account_id and j.kind = k.kind
                                               and j.leased_until is not null),
                            9223372036854775807),
                   coalesce(k.max_per_second - (select coalesce(sum(s.n), 0) from account_kind_start s
                                                where s.account_id = k.account_id and s.kind = k.kind
                                                  and s.at >= now() - interval '1 second'),
                            9223372036854775807)
               ) as left_now
        from account_kind_limit k
        where k.account_id = any($1)
        "#,
    )
    .bind(accounts)
    .bind(queue)
    .fetch_all(conn)
    .await?;
    let mut out: HashMap<String, Allowance> = accounts.iter().map(|a| (a.to_string(), Allowance::default())).collect();
    for (account, kind, left) in rows {
        let allow = out.entry(account).or_default();
        match kind {
            None => allow.queue = Some(left),
            Some(kind) => {
                allow.kinds.insert(kind, left);
            }
        }
    }
    Ok(out)
}

/// Forgets starts older than any rate window still being counted.
pub async fn prune_starts<'e>(exec: impl PgExecutor<'e>) -> Result<u64> {
    Ok(
        sqlx::query("delete from account_kind_start where at < now() - interval '10 seconds'")
            .execute(exec)
            .await?
            .rows_affected(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(list: &[(&str, i32, bool)]) -> Vec<Active> {
        list.iter()
            .map(|&(a, w, l)| Active {
                account_id: a.into(),
                weight: w,
                limited: l,
            })
            .collect()
    }

    fn kinds(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    /// Runs `claims` claims of `limit` where every account always has enough work, and counts each one's jobs.
    fn share_out(share: &mut FairShare, limit: i64, claims: usize) -> HashMap<String, i64> {
        let mut got: HashMap<String, i64> = HashMap::new();
        for _ in 0..claims {
            let units = share.plan(limit, &kinds(&["k"]), &HashMap::new());
            let taken: HashMap<&str, i64> = units.iter().map(|u| (u.a.as_str(), u.q)).collect();
            for u in &units {
                *got.entry(u.a.clone()).or_default() += u.q;
            }
            share.settle(&units, &taken);
        }
        got
    }

    #[test]
    fn an_idle_claimer_goes_without_the_list_once() {
        let mut s = FairShare::new();
        assert!(!s.take_blind(), "a new claimer reads the list first");
        s.set_active(active(&[("a", 1, false)]), Instant::now());
        s.idle();
        assert!(s.active().is_empty() && s.stale(Instant::now()));
        assert!(s.take_blind());
        assert!(!s.take_blind(), "the claim after it reads the list");
        s.idle();
        s.invalidate();
        assert!(!s.take_blind(), "a forced re-read is not blind");
        s.idle();
        s.set_active(active(&[("a", 1, false)]), Instant::now());
        assert!(!s.take_blind(), "a fresh list supersedes");
    }

    #[test]
    fn an_account_alone_gets_the_whole_claim() {
        let mut s = FairShare::new();
        s.set_active(active(&[("a", 1, false)]), Instant::now());
        let units = s.plan(64, &kinds(&["k"]), &HashMap::new());
        assert_eq!(
            units,
            [Unit {
                a: "a".into(),
                k: kinds(&["k"]),
                q: 64,
                f: true
            }]
        );
    }

    #[test]
    fn weights_share_claims_in_proportion() {
        let mut s = FairShare::new();
        s.set_active(active(&[("a", 3, false), ("b", 1, false)]), Instant::now());
        let got = share_out(&mut s, 10, 100);
        assert_eq!(got["a"] + got["b"], 1000);
        assert!((740..=760).contains(&got["a"]), "{got:?}");
    }

    #[test]
    fn parts_below_one_job_come_in_turn() {
        // 100 accounts, claims of 16: each account's part is 0.16 of a job, yet every one is served.
        let mut s = FairShare::new();
        let names: Vec<String> = (0..100).map(|i| format!("a{i}")).collect();
        let list: Vec<(&str, i32, bool)> = names.iter().map(|n| (n.as_str(), 1, false)).collect();
        s.set_active(active(&list), Instant::now());
        let got = share_out(&mut s, 16, 100);
        assert_eq!(got.values().sum::<i64>(), 1600);
        assert!(got.values().all(|&n| (15..=17).contains(&n)), "{got:?}");
    }

    #[test]
    fn many_accounts_come_round_a_few_at_a_time() {
        // 200 accounts, claims of 1 000: each claim serves at most MAX_ACCOUNTS of them, and shares the whole
        // claim between them; over 400 claims every account gets its 2 000, give or take what one claim's turn is
        // worth.
        let mut s = FairShare::new();
        let names: Vec<String> = (0..200).map(|i| format!("a{i}")).collect();
        let list: Vec<(&str, i32, bool)> = names.iter().map(|n| (n.as_str(), 1, false)).collect();
        s.set_active(active(&list), Instant::now());
        let units = s.plan(1000, &kinds(&["k"]), &HashMap::new());
        assert!(units.iter().filter(|u| u.q > 0).count() <= MAX_ACCOUNTS);
        assert_eq!(units.len(), 200, "the others may take leftovers");
        assert_eq!(units.iter().map(|u| u.q).sum::<i64>(), 1000);
        s.settle(&units, &units.iter().map(|u| (u.a.as_str(), u.q)).collect());
        let got = share_out(&mut s, 1000, 399);
        let first: HashMap<&str, i64> = units.iter().map(|u| (u.a.as_str(), u.q)).collect();
        let total = |a: &str| got.get(a).copied().unwrap_or(0) + first.get(a).copied().unwrap_or(0);
        assert!(names.iter().all(|a| (1930..=2070).contains(&total(a))), "{got:?}");
    }

    #[test]
    fn an_account_that_ran_out_keeps_no_credit() {
        let mut s = FairShare::new();
        s.set_active(active(&[("a", 1, false), ("b", 1, false)]), Instant::now());
        let units = s.plan(10, &kinds(&["k"]), &HashMap::new());
        // b had one job: it took 1 of its 5, a took its 5 and the 4 b left.
        s.settle(&units, &HashMap::from([("a", 9), ("b", 1)]));
        assert_eq!(s.credit["b"], 0.0);
        assert_eq!(s.credit["a"], 0.0);
        // Next claim: b, still listed, is credited afresh, not with what it could not use.
        let units = s.plan(10, &kinds(&["k"]), &HashMap::new());
        assert_eq!(units.iter().map(|u| u.q).collect::<Vec<_>>(), [5, 5]);
    }

    #[test]
    fn limits_bound_a_limited_accounts_units_and_keep_it_from_leftovers() {
        let mut s = FairShare::new();
        s.set_active(active(&[("a", 1, true), ("b", 1, false)]), Instant::now());
        let allow = HashMap::from([(
            "a".to_string(),
            Allowance {
                queue: Some(5),
                kinds: HashMap::from([("slow".to_string(), 2)]),
            },
        )]);
        let units = s.plan(100, &kinds(&["slow", "fast"]), &allow);
        assert_eq!(
            units,
            [
                Unit {
                    a: "a".into(),
                    k: kinds(&["slow"]),
                    q: 2,
                    f: false
                },
                Unit {
                    a: "a".into(),
                    k: kinds(&["fast"]),
                    q: 3,
                    f: false
                },
                Unit {
                    a: "b".into(),
                    k: kinds(&["slow", "fast"]),
                    q: 50,
                    f: true
                },
            ]
        );
    }

    #[test]
    fn a_kind_limit_alone_leaves_the_other_kinds_to_leftovers() {
        let mut s = FairShare::new();
        s.set_active(active(&[("a", 1, true)]), Instant::now());
        let allow = HashMap::from([(
            "a".to_string(),
            Allowance {
                queue: None,
                kinds: HashMap::from([("slow".to_string(), 0)]),
            },
        )]);
        let units = s.plan(10, &kinds(&["slow", "fast"]), &allow);
        assert_eq!(
            units,
            [Unit {
                a: "a".into(),
                k: kinds(&["fast"]),
                q: 10,
                f: true
            }]
        );
    }

    #[test]
    fn a_limited_account_without_allowance_gets_nothing() {
        let mut s = FairShare::new();
        s.set_active(active(&[("a", 1, true)]), Instant::now());
        assert!(s.plan(10, &kinds(&["k"]), &HashMap::new()).is_empty());
    }

    #[test]
    fn the_list_goes_stale() {
        let mut s = FairShare::new();
        let t = Instant::now();
        assert!(s.stale(t));
        s.set_active(Vec::new(), t);
        assert!(!s.stale(t));
        assert!(s.stale(t + REFRESH));
        s.invalidate();
        assert!(s.stale(t));
    }
}

//! What a batch of executions writes: the interpreter's results turned into rows (events with their seqs,
//! audit records, queued events, webhook delivery jobs, positions, completions), collected so that the batch writes
//! each kind with one statement.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use ordo_workers::rules::{EntityKey, Position, PositionKey};
use serde_json::{json, Value};
use sqlx::PgConnection;

use super::audit::{self, Audit};
use super::entity::{write_changes, Changed};
use super::event::{accept_events, finish_events, insert_rows, Accept, EventKind, EventStatus, Finished, Row};
use super::interpreter::{Staged, MAX_DELAY_SECONDS};
use super::inventory::write_positions;
use super::webhook;
use super::Result;
use crate::queue::{self, Completion, Job, JobState, NewJob};
use crate::telemetry::trace;
use crate::tenancy::AccountId;

/// Everything a batch writes, collected from its executions: one statement per kind of write.
#[derive(Default)]
pub(crate) struct Writes {
    /// Changed positions, as last left.
    pub positions: BTreeMap<PositionKey, Position>,
    /// Inline events, their seqs drawn.
    inline: Vec<Row>,
    /// Root events' outcomes: seq, status, error.
    roots: Vec<(i64, EventStatus, Option<String>)>,
    /// Events leaving their entity, to queue.
    pub emitted: Vec<Accept>,
    /// Webhook delivery jobs.
    pub hooks: Vec<NewJob>,
    /// Audit records, in execution order.
    audits: Vec<Row>,
    /// Completions of claimed jobs (leased, `running`), not yet written.
    completions: Vec<Completion>,
    /// Completions of jobs the batch only locked (the events waiting behind the claimed ones), not yet written.
    locked: Vec<Completion>,
}

/// A successful execution to stage: the interpreter's result and where it belongs.
pub(crate) struct Execution<'a> {
    /// The job of its root event.
    pub job: &'a Job,
    /// The account.
    pub account: &'a AccountId,
    /// Its entity.
    pub entity: &'a EntityKey,
    /// What it writes.
    pub staged: &'a Staged,
    /// Its events' seqs, the root's first.
    pub seqs: &'a [i64],
    /// The workflow's `webhook.retry` schedule.
    pub retry: &'a str,
}

impl Writes {
    /// Completes `job` with `result` (with the claimed jobs, or with the locked ones).
    pub fn settle(&mut self, job: &Job, result: Value) {
        let c = Completion {
            id: job.id,
            attempt: job.attempt,
            result,
        };
        if job.state == JobState::Running {
            self.completions.push(c);
        } else {
            self.locked.push(c);
        }
    }

    /// A failed event: its status and audit records, nothing else of its execution. Its inline events were
    /// never kept, so their records describe the root.
    pub fn fail(&mut self, job: &Job, root_seq: i64, key: &EntityKey, msg: &str, audits: &[Audit]) {
        self.roots.push((root_seq, EventStatus::Failed, Some(msg.to_owned())));
        self.audits.extend(audit::rows(key, audits, &[root_seq]));
        self.settle(job, json!({"status": "failed", "error": msg}));
    }

    /// Stages what a successful execution writes but the entity (the batch keeps it) and its positions.
    pub fn stage(&mut self, x: Execution<'_>) {
        let (job, staged, seqs) = (x.job, x.staged, x.seqs);
        self.inline
            .extend(staged.events.iter().enumerate().skip(1).map(|(i, e)| Row {
                seq: seqs[i],
                name: e.name.clone(),
                kind: EventKind::Orchestration,
                category: None,
                status: e.status,
                entity: x.entity.clone(),
                attributes: e.attributes.clone(),
                source_event_id: Some(seqs[e.source]),
                job_id: None,
                scheduled_at: None,
                processed: true,
                processed_at: None,
                error: e.error.clone(),
                traceparent: job.traceparent.clone(),
            }));
        let root = &staged.events[0];
        self.roots.push((seqs[0], root.status, root.error.clone()));

        // Events leaving the entity: queued jobs of their own root entities.
        let now = Utc::now();
        self.emitted.extend(staged.emitted.iter().map(|e| {
            Accept {
                name: e.name.clone(),
                entity: e.entity.clone(),
                attributes: e.attributes.clone(),
                // Bounded by MAX_DELAY_SECONDS when the action was applied.
                scheduled_at: e
                    .delay_seconds
                    .map(|s| now + chrono::Duration::seconds(s.min(MAX_DELAY_SECONDS) as i64)),
                source_event_id: Some(seqs[e.source]),
                idempotency_key: None,
                // Each emitted event is a new hop of the caller's trace.
                traceparent: trace::child_of(job.traceparent.as_deref()),
            }
        }));

        // Webhooks: one delivery job each, with a key stable across its retries.
        self.hooks.extend(staged.webhooks.iter().enumerate().map(|(n, w)| {
            let e = &staged.events[w.source];
            let seq = seqs[w.source];
            let body = json!({
                "id": seq.to_string(),
                "seq": seq,
                "name": e.name,
                "kind": "orchestration",
                "status": "success",
                "entity": x.entity,
                "entity_status": staged.status,
                "entity_attributes": staged.attributes,
                "attributes": e.attributes,
                "source_event_id": (w.source != 0).then(|| seqs[e.source].to_string()),
                "processed_at": now,
            });
            let mut hook = webhook::delivery_job(x.account, &w.url, body, seq, n, x.retry, x.entity);
            hook.traceparent = trace::child_of(job.traceparent.as_deref());
            hook
        }));

        self.audits.extend(audit::rows(x.entity, &staged.audits, seqs));
        self.settle(
            job,
            json!({
                "status": root.status,
                "inline_events": staged.events.len() - 1,
                "emitted": staged.emitted.len(),
                "webhooks": staged.webhooks.len(),
            }),
        );
    }

    /// Completes the settled jobs, the locked ones in `owner`'s name; a lost lease fails the whole batch (nothing
    /// of it commits).
    pub async fn complete(&mut self, conn: &mut PgConnection, account: &AccountId, owner: &str) -> Result<()> {
        let mut claimed = std::mem::take(&mut self.completions);
        let mut locked = std::mem::take(&mut self.locked);
        // Results name the outcome and its error, which may quote the customer's data: sealed like any result.
        for c in claimed.iter_mut().chain(locked.iter_mut()) {
            c.result = queue::seal_json(account.as_str(), c.id.0, "result", &c.result)?;
        }
        let mut done = queue::complete_many(&mut *conn, &claimed).await?;
        done.extend(queue::complete_locked(&mut *conn, &locked, owner).await?);
        if let Some(lost) = claimed.iter().chain(&locked).find(|c| !done.contains(&c.id)) {
            return Err(queue::Error::LeaseLost {
                id: lost.id,
                attempt: lost.attempt,
            }
            .into());
        }
        Ok(())
    }

    /// Writes everything but the completions, and the entities the batch changed. The executed events (roots
    /// and inline ones) are stamped `processed_at` from `at` on, one microsecond apart in `seq` order: an
    /// entity's log then reads in time in the order it lists, though an inline event runs before the entity's
    /// next root event of the batch whose seq is lower.
    pub async fn write(
        self,
        conn: &mut PgConnection,
        account: &AccountId,
        entities: &[Changed<'_>],
        at: DateTime<Utc>,
    ) -> Result<()> {
        let stamps = stamps(
            self.roots.iter().map(|r| r.0).chain(self.inline.iter().map(|r| r.seq)),
            at,
        );
        let positions: Vec<(PositionKey, Position)> = self.positions.into_iter().collect();
        write_positions(&mut *conn, account, &positions).await?;
        let mut inline = self.inline;
        for r in &mut inline {
            r.processed_at = stamps.get(&r.seq).copied();
        }
        insert_rows(&mut *conn, account, &inline).await?;
        write_changes(&mut *conn, account, entities).await?;
        let finished: Vec<Finished> = self
            .roots
            .into_iter()
            .map(|(seq, status, error)| Finished {
                seq,
                status,
                error,
                processed_at: stamps.get(&seq).copied().unwrap_or(at),
            })
            .collect();
        finish_events(&mut *conn, account, &finished).await?;
        accept_events(&mut *conn, account, self.emitted).await?;
        queue::enqueue_many(&mut *conn, account, &self.hooks).await?;
        insert_rows(&mut *conn, account, &self.audits).await?;
        Ok(())
    }
}

/// `processed_at` of each of `seqs`: `at`, then one microsecond more per event in `seq` order, so that the stamps
/// never decrease along `seq`, whatever order the events ran or the database visits their rows in.
fn stamps(seqs: impl Iterator<Item = i64>, at: DateTime<Utc>) -> HashMap<i64, DateTime<Utc>> {
    let mut seqs: Vec<i64> = seqs.collect();
    seqs.sort_unstable();
    seqs.into_iter()
        .enumerate()
        .map(|(i, seq)| (seq, at + chrono::Duration::microseconds(i as i64)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stamps follow seq order, one microsecond apart, whatever order the seqs come in.
    #[test]
    fn stamps_increase_along_seq() {
        let at = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).expect("a valid time");
        let s = stamps([12, 10, 11].into_iter(), at);
        assert_eq!(s[&10], at);
        assert_eq!(s[&11], at + chrono::Duration::microseconds(1));
        assert_eq!(s[&12], at + chrono::Duration::microseconds(2));
    }
}

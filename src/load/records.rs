//! Pure record logic: validation at the door, partitioning into chunks by position, and the changed/unchanged
//! decision of a chunk against the positions' current quantities.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use serde::Serialize;
use serde_json::Value;

/// Most records in one batch (more → 413).
pub const MAX_RECORDS: usize = 5_000;

/// Records per chunk job of a full batch, roughly. Big enough that a chunk is a few bulk statements, small enough
/// that a chunk's events (one per-entity advisory lock each, held to commit) stay well inside PostgreSQL's shared
/// lock table.
pub const CHUNK_RECORDS: usize = 1_000;

/// Partitions of an account's positions: chunk `p` of every batch holds the batch's records of partition `p`, and
/// the chunk jobs of one partition share a concurrency key, so the queue applies them one at a time in batch
/// order — a position's later batch always wins — while the partitions run in parallel.
pub const PARTITIONS: usize = MAX_RECORDS / CHUNK_RECORDS;

/// The chunk number of records refused at the door: stored already processed, never given to a job.
pub const REFUSED_CHUNK: i32 = -1;

/// Longest `sku_ref` or `location_ref` accepted.
const MAX_REF_LEN: usize = 255;

/// What happened to one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Its quantity equalled the position's: skipped.
    Unchanged,
    /// It changed (or created) the position.
    Changed,
    /// Invalid; see its message.
    Failed,
}

crate::text_enum::text_enum!(Outcome as "record outcome" {
    Unchanged = "unchanged",
    Changed = "changed",
    Failed = "failed",
});

/// One chunk's records as parallel arrays (the shape of a `load_chunk` row).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkRows {
    /// Index of each record in its batch.
    pub idx: Vec<i32>,
    /// `sku_ref` (null when missing or not a string, refused records only).
    pub sku_ref: Vec<Option<String>>,
    /// `location_ref`, likewise.
    pub location_ref: Vec<Option<String>>,
    /// `qty` (null when invalid, refused records only).
    pub qty: Vec<Option<i64>>,
    /// Why each refused record failed (empty for job chunks).
    pub message: Vec<Option<String>>,
}

impl ChunkRows {
    /// Records in the chunk.
    pub fn len(&self) -> usize {
        self.idx.len()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.idx.is_empty()
    }
}

/// A batch split for storage: chunks for the jobs, and the records refused at the door.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Split {
    /// Valid records by partition (empty partitions left out); each is one job.
    pub chunks: Vec<(i32, ChunkRows)>,
    /// Invalid records with their messages.
    pub refused: ChunkRows,
}

/// A string key field: the value, or why the record is refused.
fn key_field<'a>(record: &'a serde_json::Map<String, Value>, name: &str) -> Result<&'a str, String> {
    match record.get(name) {
        None | Some(Value::Null) => Err(format!("{name} is required")),
        Some(Value::String(s)) if s.is_empty() => Err(format!("{name} is required")),
        Some(Value::String(s)) if s.len() > MAX_REF_LEN => Err(format!("{name} must be at most {MAX_REF_LEN} bytes")),
        Some(Value::String(s)) if s.contains('\0') => Err(format!("{name} must not contain NUL characters")),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("{name} must be a string")),
    }
}

fn qty_field(record: &serde_json::Map<String, Value>) -> Result<i64, String> {
    match record.get("qty") {
        None | Some(Value::Null) => Err("qty is required".to_owned()),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(q) if q >= 0 => Ok(q),
            _ => Err(format!("qty must be a non-negative integer, got {n}")),
        },
        Some(other) => Err(format!("qty must be a non-negative integer, got {other}")),
    }
}

fn string_of(record: &serde_json::Map<String, Value>, name: &str) -> Option<String> {
    record.get(name).and_then(Value::as_str).map(|s| s.replace('\0', ""))
}

/// Which chunk of `n` a position belongs to. A batch's chunks run in order behind the same partition of every
/// earlier batch of its load, so a position must land in the same partition whichever build of ordo took the
/// batch: SipHash-1-3 with zero keys, what std's `DefaultHasher` computed when loads were introduced, written out
/// because std does not promise that `DefaultHasher` stays the same from one Rust release to the next.
fn chunk_of(sku_ref: &str, location_ref: &str, n: usize) -> usize {
    let mut h = siphasher::sip::SipHasher13::new_with_keys(0, 0);
    (sku_ref, location_ref).hash(&mut h);
    (h.finish() % n as u64) as usize
}

/// Validates every record and splits the valid ones into `partitions` chunks by position, so all records of one
/// position land in the same chunk (the same partition in every batch); invalid records (a key missing, `qty` not
/// a non-negative integer) are refused with a message naming every problem.
pub fn split(records: &[Value], partitions: usize) -> Split {
    let mut valid: Vec<(i32, &str, &str, i64)> = Vec::with_capacity(records.len());
    let mut refused = ChunkRows::default();
    for (i, record) in records.iter().enumerate() {
        let index = i as i32;
        let Some(obj) = record.as_object() else {
            refused.idx.push(index);
            refused.sku_ref.push(None);
            refused.location_ref.push(None);
            refused.qty.push(None);
            refused
                .message
                .push(Some("record must be an object {sku_ref, location_ref, qty}".to_owned()));
            continue;
        };
        match (
            key_field(obj, "sku_ref"),
            key_field(obj, "location_ref"),
            qty_field(obj),
        ) {
            (Ok(s), Ok(l), Ok(q)) => valid.push((index, s, l, q)),
            (s, l, q) => {
                let problems: Vec<String> = [s.err(), l.err(), q.err()].into_iter().flatten().collect();
                refused.idx.push(index);
                refused.sku_ref.push(string_of(obj, "sku_ref"));
                refused.location_ref.push(string_of(obj, "location_ref"));
                refused.qty.push(obj.get("qty").and_then(Value::as_i64));
                refused.message.push(Some(problems.join("; ")));
            }
        }
    }
    let n = partitions.max(1);
    let mut chunks = vec![ChunkRows::default(); n];
    for (index, s, l, q) in valid {
        let c = &mut chunks[chunk_of(s, l, n)];
        c.idx.push(index);
        c.sku_ref.push(Some(s.to_owned()));
        c.location_ref.push(Some(l.to_owned()));
        c.qty.push(Some(q));
    }
    // Small batches leave partitions empty; an empty chunk would be a job with nothing to do.
    let chunks = chunks
        .into_iter()
        .enumerate()
        .filter(|(_, c)| !c.is_empty())
        .map(|(p, c)| (p as i32, c))
        .collect();
    Split { chunks, refused }
}

/// A position's key.
pub type Key = (String, String);

/// The decision for one chunk: each record's outcome, and each changed position's final and previous quantity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Per record, in chunk order.
    pub outcomes: Vec<Outcome>,
    /// Per record that changed its position: (record position in the chunk, previous quantity, new quantity).
    pub changes: Vec<(usize, Option<i64>, i64)>,
    /// Positions to write: final quantity, for every position some record changed and that ends up different
    /// from its current value.
    pub writes: BTreeMap<Key, i64>,
}

/// Decides which records change their position, given the positions' current `on_hand` (absent = the position
/// does not exist yet, so any record creates it). Records apply in batch order: a later record of the same
/// position compares with what the earlier one set.
pub fn decide(keys: &[(&str, &str)], qty: &[i64], idx: &[i32], current: &HashMap<Key, i64>) -> Decision {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by_key(|&i| idx[i]);
    let mut state: HashMap<(&str, &str), Option<i64>> = HashMap::with_capacity(keys.len());
    let mut d = Decision {
        outcomes: vec![Outcome::Unchanged; keys.len()],
        ..Decision::default()
    };
    for i in order {
        let (s, l) = keys[i];
        let now = state
            .entry((s, l))
            .or_insert_with(|| current.get(&(s.to_owned(), l.to_owned())).copied());
        if *now != Some(qty[i]) {
            d.outcomes[i] = Outcome::Changed;
            d.changes.push((i, *now, qty[i]));
            *now = Some(qty[i]);
        }
    }
    for (&(s, l), v) in &state {
        let key = (s.to_owned(), l.to_owned());
        if let Some(v) = *v {
            if current.get(&key) != Some(&v) {
                d.writes.insert(key, v);
            }
        }
    }
    d
}

/// Seals (`open` false) or opens the text fields of a chunk's records in place: each element under its own
/// identity (account, batch, chunk, index, field), so no record's value can be moved to another (see
/// [`crate::crypt`]; the account's data key loaded). `qty` stays plain: a number identifies nobody.
pub(crate) fn crypt_fields(
    account: &str,
    batch_id: i64,
    chunk: i32,
    idx: &[i32],
    fields: &mut [(&str, &mut Vec<Option<String>>)],
    open: bool,
) -> crate::crypt::Result<()> {
    if !crate::crypt::enabled() && !open {
        return Ok(());
    }
    let (batch, chunk) = (batch_id.to_string(), chunk.to_string());
    for (name, values) in fields.iter_mut() {
        for (i, v) in values.iter_mut().enumerate() {
            let Some(text) = v.take() else { continue };
            let index = idx.get(i).copied().unwrap_or(-1).to_string();
            let row = [batch.as_str(), chunk.as_str(), index.as_str()];
            let aad = crate::crypt::Aad::new(account, "load_chunk", &row, name);
            *v = Some(if open {
                crate::crypt::open_text(&aad, text)?
            } else {
                crate::crypt::seal_text(&aad, &text)?
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Positions keep the partitions that earlier builds gave them: the hashes of these positions are the ones
    /// std's `DefaultHasher` gave (rustc 1.95), so a load begun by an earlier build goes on in the same partitions.
    #[test]
    fn chunk_of_is_the_partition_earlier_builds_computed() {
        let recorded: [(&str, &str, u64); 6] = [
            ("SKU-0000000", "DC-00", 6887925948793469043),
            ("SKU-0000001", "DC-01", 5087986182182412148),
            ("A", "B", 10999167581076817261),
            ("", "", 2147057924765956750),
            ("ürün-42", "depo/7", 3211944271321476834),
            ("SKU-0099999", "DC-39", 17418726592694964729),
        ];
        for (s, l, hash) in recorded {
            let mut h = siphasher::sip::SipHasher13::new_with_keys(0, 0);
            (s, l).hash(&mut h);
            assert_eq!(h.finish(), hash, "{s}@{l}");
            assert_eq!(chunk_of(s, l, PARTITIONS) as u64, hash % PARTITIONS as u64);
        }
    }

    /// Every kind of bad record is refused with a reason naming each problem; the rest are kept in order.
    #[test]
    fn split_refuses_invalid_records_with_reasons() {
        let records = vec![
            json!({"sku_ref": "a", "location_ref": "x", "qty": 1}),
            json!({"sku_ref": "a", "location_ref": "x", "qty": -1}),
            json!({"location_ref": "x", "qty": 1}),
            json!({"sku_ref": "a", "location_ref": "", "qty": 1.5}),
            json!({"sku_ref": "a", "location_ref": "x", "qty": "7"}),
            json!({"sku_ref": 3, "location_ref": "x", "qty": 0}),
            json!("nope"),
            json!({"sku_ref": "b", "location_ref": "y", "qty": 0}),
        ];
        let s = split(&records, PARTITIONS);
        assert_eq!(s.refused.idx, [1, 2, 3, 4, 5, 6]);
        let msgs: Vec<&str> = s.refused.message.iter().map(|m| m.as_deref().unwrap()).collect();
        assert_eq!(msgs[0], "qty must be a non-negative integer, got -1");
        assert_eq!(msgs[1], "sku_ref is required");
        assert_eq!(
            msgs[2],
            "location_ref is required; qty must be a non-negative integer, got 1.5"
        );
        assert_eq!(msgs[3], "qty must be a non-negative integer, got \"7\"");
        assert_eq!(msgs[4], "sku_ref must be a string");
        assert!(msgs[5].starts_with("record must be an object"));
        let kept: Vec<i32> = s.chunks.iter().flat_map(|(_, c)| c.idx.clone()).collect();
        assert_eq!(kept.len(), 2);
    }

    /// One position is never in two chunks, chunks are about the asked size, and nothing is lost.
    #[test]
    fn split_keeps_a_position_in_one_chunk() {
        let records: Vec<Value> = (0..5000)
            .map(|i| json!({"sku_ref": format!("s{}", i % 1700), "location_ref": "l", "qty": i}))
            .collect();
        let s = split(&records, PARTITIONS);
        assert_eq!(s.chunks.len(), 5);
        assert_eq!(s.chunks.iter().map(|(_, c)| c.len()).sum::<usize>(), 5000);
        assert!(s.chunks.iter().all(|(_, c)| (700..1300).contains(&c.len())), "balanced");
        let mut owner: HashMap<String, i32> = HashMap::new();
        for (p, rows) in &s.chunks {
            for sku in &rows.sku_ref {
                let prev = owner.insert(sku.clone().unwrap(), *p);
                assert!(prev.is_none() || prev == Some(*p), "{sku:?} in two chunks");
            }
        }
        // The same position goes to the same partition in every batch, whatever the batch's size.
        let small = split(&records[..3], PARTITIONS);
        for (p, rows) in &small.chunks {
            for sku in &rows.sku_ref {
                assert_eq!(owner[sku.as_ref().unwrap()], *p);
            }
        }
    }

    /// Records apply in batch order: equal → unchanged, different or new → changed, and only net changes write.
    #[test]
    fn decide_compares_with_the_running_value() {
        let current: HashMap<Key, i64> = [(("a".into(), "x".into()), 5), (("b".into(), "x".into()), 1)].into();
        let keys = [("a", "x"), ("b", "x"), ("c", "x"), ("b", "x"), ("b", "x")];
        let qty = [5, 2, 0, 2, 1];
        let idx = [0, 1, 2, 3, 4];
        let d = decide(&keys, &qty, &idx, &current);
        use Outcome::*;
        assert_eq!(d.outcomes, [Unchanged, Changed, Changed, Unchanged, Changed]);
        assert_eq!(d.changes, [(1, Some(1), 2), (2, None, 0), (4, Some(2), 1)]);
        // b went 1 → 2 → 1: no net write; c is created.
        assert_eq!(d.writes, BTreeMap::from([(("c".to_owned(), "x".to_owned()), 0)]));
    }
}

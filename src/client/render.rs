//! Plain-text output for people: aligned tables of list items, and one resource as aligned `field  value` lines.

use std::fmt::Write as _;

use serde_json::Value;

/// A column: its header and the JSON pointer of its value in an item.
pub(crate) type Column = (&'static str, &'static str);

/// A value as a table cell: strings bare, null as `-`, anything else as compact JSON.
pub(crate) fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The items as an aligned table with a header row; "(none)" when there are none.
pub(crate) fn table(items: &[Value], columns: &[Column]) -> String {
    let mut rows: Vec<Vec<String>> = vec![columns.iter().map(|(h, _)| (*h).to_owned()).collect()];
    for item in items {
        rows.push(
            columns
                .iter()
                .map(|(_, ptr)| cell(item.pointer(ptr).unwrap_or(&Value::Null)))
                .collect(),
        );
    }
    let out = aligned(&rows);
    if items.is_empty() {
        format!("{out}(none)\n")
    } else {
        out
    }
}

/// One resource as `field  value` lines: the fields named in `first` in that order, then the others by name;
/// nested objects and arrays as compact JSON.
pub(crate) fn fields(v: &Value, first: &[&str]) -> String {
    match v {
        Value::Object(map) => {
            let leading = first.iter().filter_map(|k| map.get_key_value(*k));
            let rest = map.iter().filter(|(k, _)| !first.contains(&k.as_str()));
            let rows: Vec<Vec<String>> = leading.chain(rest).map(|(k, v)| vec![k.clone(), cell(v)]).collect();
            aligned(&rows)
        }
        other => format!("{}\n", cell(other)),
    }
}

/// Rows with each column padded to its widest cell (by characters); the last column is not padded.
fn aligned(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, c) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Columns line up under their headers; null is `-`, strings are bare, numbers plain.
    #[test]
    fn table_aligns_columns() {
        let items = [
            json!({"id": "1", "kind": "noop", "attempt": 0, "run_at": null}),
            json!({"id": "12345", "kind": "http.request", "attempt": 2, "run_at": "2026-12-07T00:00:00Z"}),
        ];
        let t = table(
            &items,
            &[
                ("ID", "/id"),
                ("KIND", "/kind"),
                ("ATTEMPT", "/attempt"),
                ("RUN AT", "/run_at"),
            ],
        );
        assert_eq!(
            t,
            "ID     KIND          ATTEMPT  RUN AT\n\
             1      noop          0        -\n\
             12345  http.request  2        2026-12-07T00:00:00Z\n"
        );
        assert_eq!(table(&[], &[("ID", "/id")]), "ID\n(none)\n");
    }

    /// A resource prints one aligned line per field, the named ones first, nested values as JSON.
    #[test]
    fn fields_align() {
        let v = json!({"id": "7", "args": {"ms": 5}, "state": "available"});
        assert_eq!(
            fields(&v, &["id", "state"]),
            "id     7\nstate  available\nargs   {\"ms\":5}\n"
        );
    }
}

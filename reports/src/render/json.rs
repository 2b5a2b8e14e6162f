//! `report.json`: the record itself, as canonical pretty JSON.
//!
//! The layout is fixed so that equal records give equal bytes and diffs between runs stay readable: two-space
//! indentation, object fields in declaration order, one field per line, arrays of scalars (token ids, per-token
//! divergences) on one line, arrays of objects one element per line, a final newline. Numbers use serde_json's
//! shortest round-trip form (see [`crate::num`] for non-finite values).

use crate::record::RunRecord;
use serde_json::Value;

/// Render the record as canonical JSON (UTF-8, final newline).
pub fn render(record: &RunRecord) -> String {
    // Serialising plain structs, BTreeMaps and `Real`s into a `Value` cannot fail: every map key is a string and
    // every float is handled by `Real`.
    let value = serde_json::to_value(record).unwrap_or_else(|e| Value::String(format!("unserialisable record: {e}")));
    to_canonical_string(&value)
}

/// `render` as bytes, for the renderer table.
pub fn render_bytes(record: &RunRecord) -> Vec<u8> {
    render(record).into_bytes()
}

/// Write any JSON value in the canonical layout described in the module docs.
pub fn to_canonical_string(value: &Value) -> String {
    let mut out = String::with_capacity(1 << 16);
    write_value(&mut out, value, 0);
    out.push('\n');
    out
}

fn is_scalar(v: &Value) -> bool {
    !matches!(v, Value::Array(_) | Value::Object(_))
}

fn indent(out: &mut String, level: usize) {
    for _ in 0..level {
        out.push_str("  ");
    }
}

fn write_scalar(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(out, s),
        _ => unreachable!("write_scalar is only called on scalars"),
    }
}

fn write_string(out: &mut String, s: &str) {
    // serde_json's escaping of a string cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

fn write_value(out: &mut String, v: &Value, level: usize) {
    match v {
        Value::Array(items) if items.is_empty() => out.push_str("[]"),
        Value::Array(items) if items.iter().all(is_scalar) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_scalar(out, item);
            }
            out.push(']');
        }
        Value::Array(items) => {
            write_block(out, level, ('[', ']'), items.iter(), |out, item| write_value(out, item, level + 1));
        }
        Value::Object(map) if map.is_empty() => out.push_str("{}"),
        Value::Object(map) => {
            write_block(out, level, ('{', '}'), map.iter(), |out, (k, item)| {
                write_string(out, k);
                out.push_str(": ");
                write_value(out, item, level + 1);
            });
        }
        scalar => write_scalar(out, scalar),
    }
}

/// An array or object one element a line: each indented one level deeper, commas between, the closing bracket
/// back at `level`.
fn write_block<T>(
    out: &mut String,
    level: usize,
    (open, close): (char, char),
    items: impl ExactSizeIterator<Item = T>,
    mut write_item: impl FnMut(&mut String, T),
) {
    let n = items.len();
    out.push(open);
    out.push('\n');
    for (i, item) in items.enumerate() {
        indent(out, level + 1);
        write_item(out, item);
        if i + 1 < n {
            out.push(',');
        }
        out.push('\n');
    }
    indent(out, level);
    out.push(close);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_stable_and_parses_back() {
        let v: Value = serde_json::from_str(
            r#"{"b": [1, 2.5, "x\"y"], "a": {"nested": [{"k": null}, {"k": true}], "empty": {}, "none": []}}"#,
        )
        .unwrap();
        let s = to_canonical_string(&v);
        assert_eq!(
            s,
            "{\n  \"b\": [1, 2.5, \"x\\\"y\"],\n  \"a\": {\n    \"nested\": [\n      {\n        \"k\": null\n      },\n      {\n        \"k\": true\n      }\n    ],\n    \"empty\": {},\n    \"none\": []\n  }\n}\n"
        );
        let back: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back, v);
    }
}

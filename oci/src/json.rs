//! Canonical JSON: object keys sorted, no insignificant whitespace.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Serializes `v` with every object's keys sorted (byte order), compactly.
pub fn canonical<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    let value = serde_json::to_value(v).map_err(|e| Error::BadConfig(e.to_string()))?;
    Ok(serde_json::to_vec(&sort(value)).expect("a Value always serializes"))
}

/// A copy of `v` with sorted object keys (insertion order is the output order).
pub fn sort(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let mut out = Map::new();
            for (k, v) in entries {
                out.insert(k, sort(v));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sort).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_sorted_at_every_level() {
        let v = serde_json::json!({"b": 1, "a": {"z": [ {"y": 1, "x": 2} ], "c": null}});
        assert_eq!(
            String::from_utf8(super::canonical(&v).unwrap()).unwrap(),
            r#"{"a":{"c":null,"z":[{"x":2,"y":1}]},"b":1}"#
        );
    }
}

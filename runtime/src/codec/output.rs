//! Result records as JSON.
//!
//! Key: `{"key":<group key array>,"windowStart":<ms>}` — byte-identical for
//! the same (key, window). Value: `{"key":..,"windowStart":..,"windowEnd":..,
//! <aggregation name>: <value>, ..., "final": bool, "firing": "early"|"onTime"|"late"}`.

use super::json::write_json_string;
use crate::window::WindowResult;

/// Field names of the value that aggregations may not use.
pub const RESERVED_FIELDS: &[&str] = &["key", "windowStart", "windowEnd", "final", "firing"];

/// Writes the key and value of `result` (buffers are cleared first).
pub fn encode_result(result: &WindowResult, names: &[String], key: &mut Vec<u8>, value: &mut Vec<u8>) {
    key.clear();
    key.reserve(40 + result.group_key.len());
    key.extend_from_slice(b"{\"key\":");
    key.extend_from_slice(&result.group_key);
    key.extend_from_slice(b",\"windowStart\":");
    write_json(key, &result.window.start);
    key.push(b'}');

    value.clear();
    value.reserve(96 + result.group_key.len() + 24 * names.len());
    value.extend_from_slice(b"{\"key\":");
    value.extend_from_slice(&result.group_key);
    value.extend_from_slice(b",\"windowStart\":");
    write_json(value, &result.window.start);
    value.extend_from_slice(b",\"windowEnd\":");
    write_json(value, &result.window.end);
    for (name, v) in names.iter().zip(&result.aggregates) {
        value.push(b',');
        write_json_string(value, name);
        value.push(b':');
        write_json(value, v);
    }
    value.extend_from_slice(b",\"final\":");
    value.extend_from_slice(if result.firing.is_final() {
        b"true"
    } else {
        b"false"
    });
    value.extend_from_slice(b",\"firing\":\"");
    value.extend_from_slice(result.firing.as_str().as_bytes());
    value.extend_from_slice(b"\"}");
}

/// Appends `v` as JSON (serde_json's integer/float writers, no `fmt`).
fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    let len = out.len();
    // Numbers and JSON values always serialise; keep the output valid anyway.
    if serde_json::to_writer(&mut *out, v).is_err() {
        out.truncate(len);
        out.extend_from_slice(b"null");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::Firing;
    use crate::window::Window;
    use serde_json::json;

    #[test]
    fn result_json_shape() {
        let r = WindowResult {
            group_key: br#"["u\"1",2]"#.to_vec(),
            window: Window::new(-10, 0),
            firing: Firing::Late,
            aggregates: vec![json!(3), json!(null), json!(1.5)],
        };
        let (mut k, mut v) = (Vec::new(), Vec::new());
        encode_result(&r, &["n".into(), "m".into(), "a b".into()], &mut k, &mut v);
        let k: serde_json::Value = serde_json::from_slice(&k).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&v).unwrap();
        assert_eq!(k, json!({"key": ["u\"1", 2], "windowStart": -10}));
        assert_eq!(
            v,
            json!({"key": ["u\"1", 2], "windowStart": -10, "windowEnd": 0, "n": 3, "m": null, "a b": 1.5, "final": true, "firing": "late"})
        );
    }
}

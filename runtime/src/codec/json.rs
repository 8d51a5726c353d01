//! JSON decoding that visits only the fields a plan needs: one pass with
//! serde_json (full validation), other fields skipped without allocation,
//! strings borrowed unless they contain escapes.

use std::borrow::Cow;
use std::fmt;

use serde::Deserializer;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{FieldPaths, RecordDecoder, Scalar};

#[derive(Debug, Clone, Copy, Default)]
pub struct JsonDecoder;

impl RecordDecoder for JsonDecoder {
    fn extract<'a>(
        &self,
        bytes: &'a [u8],
        paths: &FieldPaths,
        slots: &mut [Option<Scalar<'a>>],
    ) -> Result<(), String> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        ObjectSeed { node: paths, slots }
            .deserialize(&mut de)
            .and_then(|()| de.end())
            .map_err(|e| format!("invalid JSON: {e}"))
    }

    fn to_cel(&self, bytes: &[u8]) -> Result<cel::Value, String> {
        let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
        Ok(json_to_cel(&v))
    }
}

/// A JSON value as CEL sees a record: integers as `int` (only those above
/// `i64::MAX` as `uint`), other numbers as `double`, objects as maps with
/// string keys. (A plain serde conversion makes every non-negative integer
/// a `uint`, and `record.count + 1` then fails: CEL does not mix `uint`
/// and `int`.)
pub fn json_to_cel(v: &serde_json::Value) -> cel::Value {
    use serde_json::Value as J;
    match v {
        J::Null => cel::Value::Null,
        J::Bool(b) => cel::Value::Bool(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => cel::Value::String(std::sync::Arc::new(s.clone())),
        J::Array(items) => cel::Value::List(std::sync::Arc::new(items.iter().map(json_to_cel).collect())),
        J::Object(fields) => {
            let map: std::collections::HashMap<cel::objects::Key, cel::Value> = fields
                .iter()
                .map(|(k, v)| {
                    (
                        cel::objects::Key::String(std::sync::Arc::new(k.clone())),
                        json_to_cel(v),
                    )
                })
                .collect();
            cel::Value::Map(cel::objects::Map {
                map: std::sync::Arc::new(map),
            })
        }
    }
}

/// Appends `s` as a JSON string literal.
pub fn write_json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0..=0x1f => None,
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        match esc {
            Some(e) => out.extend_from_slice(e),
            None => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Visits an object, descending into the children of `node`.
struct ObjectSeed<'p, 's, 'a> {
    node: &'p FieldPaths,
    slots: &'s mut [Option<Scalar<'a>>],
}

impl<'de, 'p, 's> DeserializeSeed<'de> for ObjectSeed<'p, 's, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, 'p, 's> Visitor<'de> for ObjectSeed<'p, 's, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(child) = map.next_key_seed(KeySeed { node: self.node })? {
            match child {
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
                Some(i) => {
                    let (_, node) = &self.node.children[i];
                    if node.children.is_empty() {
                        let v = map.next_value_seed(ScalarSeed)?;
                        if let Some(slot) = node.slot {
                            self.slots[slot] = Some(v);
                        }
                    } else {
                        map.next_value_seed(NestedSeed {
                            node,
                            slots: &mut *self.slots,
                        })?;
                    }
                }
            }
        }
        Ok(())
    }

    // A record that is not an object has none of the fields.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Err(serde::de::Error::custom("record is an array, not an object"))
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom("record is a string, not an object"))
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom("record is a number, not an object"))
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom("record is a number, not an object"))
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom("record is a number, not an object"))
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom("record is a bool, not an object"))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Err(E::custom("record is null, not an object"))
    }
}

/// A nested value on a path: an object is descended into (and also captured
/// as `Composite` if the node is itself a leaf); anything else is captured
/// for the node's own slot only.
struct NestedSeed<'p, 's, 'a> {
    node: &'p FieldPaths,
    slots: &'s mut [Option<Scalar<'a>>],
}

impl<'de, 'p, 's> DeserializeSeed<'de> for NestedSeed<'p, 's, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, 'p, 's> Visitor<'de> for NestedSeed<'p, 's, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        if let Some(slot) = self.node.slot {
            self.slots[slot] = Some(Scalar::Composite);
        }
        ObjectSeed {
            node: self.node,
            slots: self.slots,
        }
        .visit_map(map)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        let v = ScalarVisitor.visit_seq(seq)?;
        self.set(v);
        Ok(())
    }
    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<(), E> {
        self.set(Scalar::Str(Cow::Borrowed(v)));
        Ok(())
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.set(Scalar::Str(Cow::Owned(v.to_owned())));
        Ok(())
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.set(Scalar::Int(v));
        Ok(())
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.set(ScalarVisitor.visit_u64::<E>(v)?);
        Ok(())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.set(Scalar::Float(v));
        Ok(())
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.set(Scalar::Bool(v));
        Ok(())
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.set(Scalar::Null);
        Ok(())
    }
}

impl<'a> NestedSeed<'_, '_, 'a> {
    fn set(self, v: Scalar<'a>) {
        if let Some(slot) = self.node.slot {
            self.slots[slot] = Some(v);
        }
    }
}

/// Deserialises an object key into the index of the matching child of
/// `node`, or `None` for a field the plan does not read.
struct KeySeed<'p> {
    node: &'p FieldPaths,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Option<usize>, E> {
        Ok(self.node.children.iter().position(|(n, _)| n == v))
    }
}

/// A leaf value.
struct ScalarSeed;

impl<'de> DeserializeSeed<'de> for ScalarSeed {
    type Value = Scalar<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Scalar<'de>, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar<'de>, E> {
        Ok(i64::try_from(v).map_or(Scalar::Float(v as f64), Scalar::Int))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Float(v))
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Null)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Composite)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Composite)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extract(json: &str, paths: &[&[&str]]) -> Result<Vec<Option<Scalar<'static>>>, String> {
        let mut tree = FieldPaths::default();
        for p in paths {
            tree.add(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        }
        let mut slots = vec![None; tree.slot_count()];
        JsonDecoder.extract(json.as_bytes(), &tree, &mut slots)?;
        Ok(slots.into_iter().map(|s| s.map(Scalar::into_owned)).collect())
    }

    #[test]
    fn extracts_nested_and_escaped_fields() {
        let got = extract(
            r#"{"skip":[1,{"x":2}],"a":{"b":"x\"y","c":1},"n":18446744073709551615,"z":null}"#,
            &[&["a", "b"], &["n"], &["z"], &["missing"], &["a"]],
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                Some(Scalar::Str("x\"y".into())),
                Some(Scalar::Float(18446744073709551615.0)),
                Some(Scalar::Null),
                None,
                Some(Scalar::Composite),
            ]
        );
    }

    #[test]
    fn rejects_invalid_json_and_non_objects() {
        assert!(extract(r#"{"a":1"#, &[&["a"]]).is_err());
        assert!(extract(r#"{"a":1} x"#, &[&["a"]]).is_err());
        assert!(extract(r#"[1]"#, &[&["a"]]).is_err());
        assert!(extract(r#"{"b":tru}"#, &[&["a"]]).is_err());
    }

    #[test]
    fn json_string_escaping_roundtrips() {
        for s in ["plain", "q\"b\\", "ctl\u{1}\n\t", "ünï"] {
            let mut out = Vec::new();
            write_json_string(&mut out, s);
            assert_eq!(serde_json::from_slice::<String>(&out).unwrap(), s);
        }
    }
}

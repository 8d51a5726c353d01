//! JSON decoding that visits only the fields a plan needs: one pass with
//! serde_json (full validation), other fields skipped without allocation,
//! strings borrowed unless they contain escapes.

use std::borrow::Cow;
use std::fmt;

use serde::Deserializer;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt,
};
use cel::common::value::Val;

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

    fn to_val<'v>(&self, bytes: &'v [u8]) -> Result<Box<dyn Val + 'v>, String> {
        to_val(bytes)
    }
}

/// A JSON record as the CEL value a variable holds, decoded in one pass
/// straight into CEL's own representation (no intermediate tree, strings
/// without escapes borrowed from `bytes`): integers as `int` (only those
/// above `i64::MAX` as `uint`), other numbers as `double`, objects as maps
/// with string keys (the last of a repeated key wins). (A plain serde
/// conversion makes every non-negative integer a `uint`, and
/// `record.count + 1` then fails: CEL does not mix `uint` and `int`.)
pub fn to_val(bytes: &[u8]) -> Result<Box<dyn Val + '_>, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = <JsonVal as serde::Deserialize>::deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| format!("invalid JSON: {e}"))?;
    Ok(v.0)
}

struct JsonVal<'de>(Box<dyn Val + 'de>);

impl<'de> serde::Deserialize<'de> for JsonVal<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValVisitor)
    }
}

struct ValVisitor;

impl<'de> Visitor<'de> for ValVisitor {
    type Value = JsonVal<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        Ok(JsonVal(Box::new(CelBool::from(b))))
    }

    fn visit_i64<E>(self, i: i64) -> Result<Self::Value, E> {
        Ok(JsonVal(Box::new(CelInt::from(i))))
    }

    fn visit_u64<E>(self, u: u64) -> Result<Self::Value, E> {
        Ok(JsonVal(match i64::try_from(u) {
            Ok(i) => Box::new(CelInt::from(i)),
            Err(_) => Box::new(CelUInt::from(u)),
        }))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Self::Value, E> {
        Ok(JsonVal(Box::new(CelDouble::from(f))))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(JsonVal(Box::new(CelString::from(s))))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(JsonVal(Box::new(CelString::from(s.to_owned()))))
    }

    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(JsonVal(Box::new(CelString::from(s))))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(JsonVal(Box::new(CelNull)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items: Vec<Box<dyn Val + 'de>> = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(JsonVal(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(JsonVal(Box::new(CelList::from(items))))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields: std::collections::HashMap<CelMapKey<'de>, Box<dyn Val + 'de>> =
            std::collections::HashMap::with_capacity(map.size_hint().unwrap_or(8));
        while let Some(JsonKey(k)) = map.next_key()? {
            let JsonVal(v) = map.next_value()?;
            fields.insert(CelMapKey::String(CelString::from(k)), v);
        }
        Ok(JsonVal(Box::new(CelMap::from(fields))))
    }
}

/// An object key, borrowed unless it has escapes.
struct JsonKey<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for JsonKey<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = JsonKey<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(JsonKey(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(JsonKey(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(JsonKey(Cow::Owned(s)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// Writes a CEL value as JSON: maps (keys as strings, sorted), lists,
/// numbers, strings, booleans, null; timestamps as RFC 3339 strings,
/// durations as seconds (`"1.5s"`, as protobuf's JSON mapping writes them).
/// Not representable, hence errors: NaN and infinities, bytes (encode them
/// first, e.g. `base64.encode(...)`), functions and other opaque values.
pub fn write_cel_json(v: &cel::Value, out: &mut Vec<u8>) -> Result<(), String> {
    use std::io::Write;
    match v {
        cel::Value::Null => out.extend_from_slice(b"null"),
        cel::Value::Bool(true) => out.extend_from_slice(b"true"),
        cel::Value::Bool(false) => out.extend_from_slice(b"false"),
        // Writing to a Vec cannot fail.
        cel::Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        cel::Value::UInt(u) => {
            let _ = write!(out, "{u}");
        }
        cel::Value::Float(f) => match serde_json::Number::from_f64(*f) {
            Some(n) => {
                let _ = serde_json::to_writer(&mut *out, &n);
            }
            None => return Err(format!("{f} cannot be written as JSON")),
        },
        cel::Value::String(s) => write_json_string(out, s),
        cel::Value::List(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_cel_json(item, out)?;
            }
            out.push(b']');
        }
        cel::Value::Map(m) => {
            let mut entries: Vec<(String, &cel::Value)> =
                m.map.iter().map(|(k, v)| (k.to_string(), v)).collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_string(out, k);
                out.push(b':');
                write_cel_json(v, out)?;
            }
            out.push(b'}');
        }
        cel::Value::Timestamp(t) => write_json_string(out, &t.to_rfc3339()),
        cel::Value::Duration(d) => {
            let ms = d.num_milliseconds();
            let text = if ms % 1000 == 0 {
                format!("{}s", ms / 1000)
            } else {
                format!("{}s", ms as f64 / 1000.0)
            };
            write_json_string(out, &text);
        }
        cel::Value::Bytes(_) => {
            return Err("bytes cannot be written as JSON: encode them, e.g. base64.encode(..)".into());
        }
        other => return Err(format!("a {:?} cannot be written as JSON", other.type_of())),
    }
    Ok(())
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

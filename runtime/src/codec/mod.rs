//! Record formats: decoding input values (only the fields a plan needs) and
//! encoding results. JSON is the one format today; [`RecordDecoder`] is the
//! seam for Avro/Protobuf.

pub mod json;
pub mod output;

use std::borrow::Cow;

pub use json::JsonDecoder;

/// A value read from a record. Borrowed from the input where possible.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar<'a> {
    Null,
    Bool(bool),
    Int(i64),
    /// Finite unless produced by an expression (checked where it matters).
    Float(f64),
    Str(Cow<'a, str>),
    /// An object or array (not inspected).
    Composite,
}

impl Scalar<'_> {
    pub fn into_owned(self) -> Scalar<'static> {
        match self {
            Scalar::Null => Scalar::Null,
            Scalar::Bool(b) => Scalar::Bool(b),
            Scalar::Int(i) => Scalar::Int(i),
            Scalar::Float(f) => Scalar::Float(f),
            Scalar::Str(s) => Scalar::Str(Cow::Owned(s.into_owned())),
            Scalar::Composite => Scalar::Composite,
        }
    }

    /// Appends the canonical JSON text (used for group keys and distinct
    /// hashing). Returns false for composites, which have none.
    pub fn write_canonical(&self, out: &mut Vec<u8>) -> bool {
        match self {
            Scalar::Null => out.extend_from_slice(b"null"),
            Scalar::Bool(true) => out.extend_from_slice(b"true"),
            Scalar::Bool(false) => out.extend_from_slice(b"false"),
            Scalar::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
            Scalar::Float(f) => match serde_json::Number::from_f64(*f) {
                Some(n) => out.extend_from_slice(n.to_string().as_bytes()),
                None => out.extend_from_slice(b"null"),
            },
            Scalar::Str(s) => json::write_json_string(out, s),
            Scalar::Composite => return false,
        }
        true
    }
}

/// A tree of field paths a plan reads; each leaf has a slot index.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldPaths {
    pub(crate) children: Vec<(String, FieldPaths)>,
    pub(crate) slot: Option<usize>,
    slots: usize,
}

impl FieldPaths {
    /// Registers `path` (e.g. `["a", "b"]` for `record.a.b`) and returns its
    /// slot; the same path always gets the same slot.
    pub fn add(&mut self, path: &[String]) -> usize {
        let next = self.slots;
        let mut node = &mut *self;
        for seg in path {
            let pos = match node.children.iter().position(|(n, _)| n == seg) {
                Some(p) => p,
                None => {
                    node.children.push((seg.clone(), FieldPaths::default()));
                    node.children.len() - 1
                }
            };
            node = &mut node.children[pos].1;
        }
        match node.slot {
            Some(s) => s,
            None => {
                node.slot = Some(next);
                self.slots += 1;
                next
            }
        }
    }

    /// Number of slots handed out.
    pub fn slot_count(&self) -> usize {
        self.slots
    }
}

/// Reads records of one format.
pub trait RecordDecoder: Send + Sync {
    /// Fills `slots[i]` with the value at the path of slot `i`, or leaves it
    /// `None` when the record has no such field. Errors describe why the
    /// record is not valid in this format.
    fn extract<'a>(
        &self,
        bytes: &'a [u8],
        paths: &FieldPaths,
        slots: &mut [Option<Scalar<'a>>],
    ) -> Result<(), String>;

    /// The whole record as a CEL value bound as a variable is (strings
    /// borrowed from `bytes` where they can be), for expressions that are
    /// not plain field paths.
    fn to_val<'v>(&self, bytes: &'v [u8]) -> Result<Box<dyn cel::common::value::Val + 'v>, String>;
}

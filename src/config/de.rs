//! A serde `Deserializer` over [`Node`] that knows the key path of every value.
//!
//! serde's own errors know neither the key nor the line; this deserializer attaches the path
//! of the value being read to every error, and words the messages for config authors
//! ("expected a table, found integer 5") rather than for Rust programmers.

use std::fmt;

use serde::de::{
    self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Unexpected, Visitor,
};

use super::document::{child_index, child_key, Kind, Node};
use crate::suggest::closest;

/// A deserialization error and the key path it belongs to (filled in on the way up).
#[derive(Debug)]
pub(crate) struct DeError {
    pub(crate) path: Option<String>,
    pub(crate) message: String,
}

impl DeError {
    fn at(mut self, path: &str) -> Self {
        if self.path.is_none() {
            self.path = Some(path.to_owned());
        }
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            path: None,
            message: msg.to_string(),
        }
    }

    fn invalid_type(unexpected: Unexpected<'_>, expected: &dyn de::Expected) -> Self {
        Self::custom(format_args!(
            "expected {}, found {}",
            describe_expected(expected),
            describe_found(&unexpected)
        ))
    }

    fn invalid_value(unexpected: Unexpected<'_>, expected: &dyn de::Expected) -> Self {
        Self::custom(format_args!(
            "invalid value {}; expected {}",
            describe_found(&unexpected),
            describe_expected(expected)
        ))
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let message = match closest(field, expected.iter().copied()) {
            Some(suggestion) => format!("unknown key; did you mean {suggestion:?}?"),
            None if expected.is_empty() => "unknown key; this table takes no keys".to_owned(),
            None => format!("unknown key; expected one of: {}", expected.join(", ")),
        };
        Self::custom(message)
    }

    fn missing_field(field: &'static str) -> Self {
        Self::custom(format_args!("missing key {field:?}"))
    }
}

/// Words serde's "expecting" strings the way TOML users talk.
fn describe_expected(expected: &dyn de::Expected) -> String {
    let text = expected.to_string();
    if text.starts_with("struct ") || text == "a map" {
        return "a table".to_owned();
    }
    match text.as_str() {
        "a sequence" => "a list".to_owned(),
        "i64" | "u64" | "u32" | "usize" => "an integer".to_owned(),
        "f64" => "a number".to_owned(),
        _ => text,
    }
}

/// Names what was found without echoing strings, which may hold expanded secrets.
fn describe_found(unexpected: &Unexpected<'_>) -> String {
    match unexpected {
        Unexpected::Bool(b) => format!("boolean {b}"),
        Unexpected::Signed(i) => format!("integer {i}"),
        Unexpected::Unsigned(u) => format!("integer {u}"),
        Unexpected::Float(f) => format!("number {f}"),
        Unexpected::Str(_) | Unexpected::Char(_) => "a string".to_owned(),
        Unexpected::Seq => "a list".to_owned(),
        Unexpected::Map => "a table".to_owned(),
        Unexpected::Other(other) => (*other).to_owned(),
        other => other.to_string(),
    }
}

/// Deserializes `T` from `node`; errors carry the key path of the offending value.
pub(crate) fn from_node<'de, T: de::Deserialize<'de>>(node: &'de Node) -> Result<T, DeError> {
    T::deserialize(NodeDeserializer { node, path: "" })
}

struct NodeDeserializer<'de, 'p> {
    node: &'de Node,
    path: &'p str,
}

impl<'de> NodeDeserializer<'de, '_> {
    fn unexpected(&self) -> Unexpected<'de> {
        match &self.node.kind {
            Kind::String(s) => Unexpected::Str(s),
            Kind::Integer(i) => Unexpected::Signed(*i),
            Kind::Float(f) => Unexpected::Float(*f),
            Kind::Boolean(b) => Unexpected::Bool(*b),
            Kind::Datetime => Unexpected::Other("a date-time"),
            Kind::Array(_) => Unexpected::Seq,
            Kind::Table(_) => Unexpected::Map,
        }
    }

    fn visit_table<V: Visitor<'de>>(
        &self,
        entries: &'de [(String, Node)],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let mut access = TableAccess {
            entries: entries.iter(),
            path: self.path,
            pending: None,
        };
        visitor.visit_map(&mut access).map_err(|error| {
            // An error raised between a key and its value (unknown or duplicate key) is about
            // that key; one raised after the last entry (missing key) is about the table.
            match access.pending.take() {
                Some(key) => error.at(&child_key(self.path, key)),
                None => error.at(self.path),
            }
        })
    }
}

impl<'de> de::Deserializer<'de> for NodeDeserializer<'de, '_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match &self.node.kind {
            Kind::String(s) => visitor.visit_borrowed_str(s),
            Kind::Integer(i) => visitor.visit_i64(*i),
            Kind::Float(f) => visitor.visit_f64(*f),
            Kind::Boolean(b) => visitor.visit_bool(*b),
            Kind::Datetime => Err(de::Error::invalid_type(self.unexpected(), &visitor)),
            Kind::Array(items) => visitor.visit_seq(ArrayAccess {
                items: items.iter().enumerate(),
                path: self.path,
            }),
            Kind::Table(entries) => return self.visit_table(entries, visitor),
        };
        result.map_err(|error| error.at(self.path))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        // A key that is present always has a value; absence is handled by serde.
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        // Derived struct visitors also accept sequences; a TOML array is never a table.
        match &self.node.kind {
            Kind::Table(entries) => self.visit_table(entries, visitor),
            _ => {
                let error: DeError = de::Error::invalid_type(self.unexpected(), &visitor);
                Err(error.at(self.path))
            }
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

struct TableAccess<'de, 'p> {
    entries: std::slice::Iter<'de, (String, Node)>,
    path: &'p str,
    /// The key most recently handed out whose value has not been read yet.
    pending: Option<&'de str>,
}

impl<'de> MapAccess<'de> for &mut TableAccess<'de, '_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((key, _)) = self.entries.as_slice().first() else {
            return Ok(None);
        };
        self.pending = Some(key.as_str());
        seed.deserialize(key.as_str().into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let (key, node) = self
            .entries
            .next()
            .ok_or_else(|| <DeError as de::Error>::custom("value requested before key"))?;
        self.pending = None;
        let path = child_key(self.path, key);
        seed.deserialize(NodeDeserializer { node, path: &path })
            .map_err(|error| error.at(&path))
    }
}

struct ArrayAccess<'de, 'p> {
    items: std::iter::Enumerate<std::slice::Iter<'de, Node>>,
    path: &'p str,
}

impl<'de> SeqAccess<'de> for ArrayAccess<'de, '_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some((index, node)) = self.items.next() else {
            return Ok(None);
        };
        let path = child_index(self.path, index);
        seed.deserialize(NodeDeserializer { node, path: &path })
            .map(Some)
            .map_err(|error| error.at(&path))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

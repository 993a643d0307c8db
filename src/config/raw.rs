//! The config file's shape as serde sees it: every key, few types, no checks.
//!
//! Keys are optional here and values stay close to TOML (durations are strings, counts are
//! `i64`) so that serde only rejects unknown keys and wrong types; everything a user can get
//! subtly wrong is checked in `validate`, which reports all problems instead of the first.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub(crate) source: Option<RawSource>,
    pub(crate) outbox: Option<RawOutbox>,
    pub(crate) http: Option<RawHttp>,
    pub(crate) delivery: Option<RawDelivery>,
    pub(crate) objects: Option<Entries<RawObject>>,
    pub(crate) subscriptions: Option<Vec<RawSubscription>>,
}

/// `[source]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSource {
    pub(crate) url: Option<String>,
    pub(crate) slot: Option<String>,
    pub(crate) publication: Option<String>,
    pub(crate) max_retained_wal: Option<RawSize>,
    pub(crate) heartbeat: Option<RawDuration>,
    pub(crate) backfill_rows_per_second: Option<i64>,
}

/// `[outbox]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutbox {
    pub(crate) url: Option<String>,
    pub(crate) schema: Option<String>,
    pub(crate) retention: Option<RawDuration>,
    pub(crate) max_event_bytes: Option<RawSize>,
}

/// `[http]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttp {
    pub(crate) listen: Option<String>,
    pub(crate) admin_token: Option<String>,
}

/// `[delivery]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDelivery {
    pub(crate) timeout: Option<RawDuration>,
    pub(crate) retry_schedule: Option<Vec<RawDuration>>,
    pub(crate) max_in_flight: Option<i64>,
    pub(crate) allow_networks: Option<Vec<String>>,
    pub(crate) shutdown_timeout: Option<RawDuration>,
}

/// `[objects.NAME]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawObject {
    pub(crate) name: Option<String>,
    pub(crate) table: Option<String>,
    pub(crate) key: Option<Vec<String>>,
    pub(crate) fields: Option<Vec<String>>,
    pub(crate) keep_state: Option<bool>,
    pub(crate) children: Option<Vec<RawChild>>,
}

/// One `[[objects.NAME.children]]` entry of a document.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawChild {
    pub(crate) name: Option<String>,
    pub(crate) table: Option<String>,
    pub(crate) parent_key: Option<Vec<String>>,
    pub(crate) key: Option<Vec<String>>,
    pub(crate) fields: Option<Vec<String>>,
    pub(crate) order_by: Option<Vec<String>>,
}

/// One `[[subscriptions]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSubscription {
    pub(crate) name: Option<String>,
    pub(crate) object: Option<String>,
    pub(crate) table: Option<String>,
    pub(crate) operations: Option<Vec<String>>,
    pub(crate) watch: Option<Vec<String>>,
    pub(crate) when: Option<String>,
    pub(crate) event_type: Option<String>,
    pub(crate) url: Option<String>,
    pub(crate) method: Option<RawMethod>,
    pub(crate) content_type: Option<String>,
    pub(crate) template: Option<String>,
    pub(crate) template_file: Option<String>,
    pub(crate) dead_on_status: Option<Vec<i64>>,
    pub(crate) secret: Option<OneOrMany>,
    pub(crate) auth: Option<RawAuth>,
    pub(crate) headers: Option<Entries<String>>,
    pub(crate) batch: Option<RawBatch>,
    pub(crate) rate_limit: Option<RawRateLimit>,
    pub(crate) max_in_flight: Option<i64>,
    pub(crate) ordering: Option<String>,
    pub(crate) active: Option<bool>,
    pub(crate) backfill: Option<bool>,
    // Overrides of `[delivery]`.
    pub(crate) timeout: Option<RawDuration>,
    pub(crate) retry_schedule: Option<Vec<RawDuration>>,
    // `[delivery]` keys that cannot be overridden: accepted here only to explain why not.
    pub(crate) allow_networks: Option<IgnoredAny>,
    pub(crate) shutdown_timeout: Option<IgnoredAny>,
}

/// `auth = { type = …, … }`; which keys each type needs is checked in validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    #[serde(rename = "type")]
    pub(crate) kind: Option<String>,
    pub(crate) token: Option<String>,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) value: Option<String>,
}

/// `batch = { max_events, max_wait }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBatch {
    pub(crate) max_events: Option<i64>,
    pub(crate) max_wait: Option<RawDuration>,
}

/// `rate_limit = { per_second, burst }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    pub(crate) per_second: Option<f64>,
    pub(crate) burst: Option<i64>,
}

/// A table whose keys are names chosen by the user, kept in file order.
#[derive(Debug)]
pub(crate) struct Entries<T>(pub(crate) Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Entries<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for EntriesVisitor<T> {
            type Value = Entries<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(Entries(entries))
            }
        }

        deserializer.deserialize_map(EntriesVisitor(PhantomData))
    }
}

/// `secret = "…"` or `secret = ["…", "…"]`.
#[derive(Debug)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneOrManyVisitor;

        impl<'de> Visitor<'de> for OneOrManyVisitor {
            type Value = OneOrMany;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(OneOrMany::One(value.to_owned()))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(OneOrMany::Many(items))
            }
        }

        deserializer.deserialize_any(OneOrManyVisitor)
    }
}

/// `method = "PUT"` or `method = { create = "POST", … }` (entries in file order).
#[derive(Debug)]
pub(crate) enum RawMethod {
    One(String),
    PerOperation(Vec<(String, String)>),
}

impl<'de> Deserialize<'de> for RawMethod {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RawMethodVisitor;

        impl<'de> Visitor<'de> for RawMethodVisitor {
            type Value = RawMethod;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a method such as \"POST\" or a table of methods per operation")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(RawMethod::One(value.to_owned()))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(RawMethod::PerOperation(entries))
            }
        }

        deserializer.deserialize_any(RawMethodVisitor)
    }
}

/// A duration as written: text to parse later, or a bare number (refused, with a hint).
#[derive(Debug)]
pub(crate) enum RawDuration {
    Text(String),
    Number(i64),
}

/// A size as written: text with a unit, or a plain byte count.
#[derive(Debug)]
pub(crate) enum RawSize {
    Text(String),
    Bytes(i64),
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextOrInt {
            expecting: "a duration such as \"15s\"",
            text: RawDuration::Text,
            int: RawDuration::Number,
        })
    }
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextOrInt {
            expecting: "a size such as \"512MB\"",
            text: RawSize::Text,
            int: RawSize::Bytes,
        })
    }
}

/// Accepts a string or an integer and wraps it with the matching constructor.
struct TextOrInt<T> {
    expecting: &'static str,
    text: fn(String) -> T,
    int: fn(i64) -> T,
}

impl<T> Visitor<'_> for TextOrInt<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<T, E> {
        Ok((self.text)(value.to_owned()))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<T, E> {
        Ok((self.int)(value))
    }
}

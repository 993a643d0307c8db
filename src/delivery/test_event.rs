//! Test events (SPEC §1, §5, §7): one signed event for a subscription, sent now and never
//! retried, recorded in the attempt log with trigger `test`; for `walhook test` and the
//! admin API's test button.
//!
//! The event is an `update` of the subscription's object: the real row with a key, or
//! sample values made from the table's columns, rendered by the subscription's templates
//! as a real event would be.

use std::time::SystemTime;

use serde_json::{Map, Value};
use tokio_postgres::Client;

use super::network::NetworkPolicy;
use super::sender::{self, Attempt};
use crate::capture::envelope::serialise;
use crate::capture::render::Rendering;
use crate::config::{Config, Operation, SubscriptionConfig, Target};
use crate::outbox::attempts::{self, TestAttempt};
use crate::pg::conninfo::ConnInfo;
use crate::pg::sql::{rfc3339, Precision};
use crate::pg::{self, quote_ident, quote_table};

/// Why `walhook test` could not send its request.
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    /// No subscription has that name (exit 2).
    #[error("unknown subscription {name:?}{hint}")]
    UnknownSubscription {
        /// The name given.
        name: String,
        /// `; did you mean "x"?`, or empty.
        hint: String,
    },
    /// `--key` is not a JSON object of the table's columns (exit 2).
    #[error("--key: {0}")]
    BadKey(String),
    /// The database could not be read (exit 1).
    #[error("{0}")]
    Failed(String),
}

impl TestError {
    /// The exit code of SPEC §1: bad usage is 2, anything else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            TestError::UnknownSubscription { .. } | TestError::BadKey(_) => 2,
            TestError::Failed(_) => 1,
        }
    }
}

/// A test event that was sent, and what came back.
#[derive(Debug, Clone)]
pub struct TestSent {
    /// The event id (`evt_test_…`), also the `webhook-id`.
    pub event_id: String,
    /// The body sent: the event or its rendering, or nothing for a GET ping.
    pub body: Vec<u8>,
    /// The URL and method, when the subscription routes per event.
    pub target: Option<Target>,
    /// The request's result.
    pub attempt: Attempt,
    /// Why the attempt is missing from the attempt log, when it is.
    pub not_recorded: Option<String>,
}

impl TestSent {
    /// Whether the receiver answered 2xx.
    pub fn succeeded(&self) -> bool {
        self.attempt
            .status
            .is_some_and(|status| (200..300).contains(&status))
    }
}

/// The configured subscription `name`, or the error with the closest name.
pub fn find<'a>(config: &'a Config, name: &str) -> Result<&'a SubscriptionConfig, TestError> {
    config
        .subscription(name)
        .ok_or_else(|| TestError::UnknownSubscription {
            name: name.to_owned(),
            hint: crate::suggest::did_you_mean(
                name,
                config.subscriptions.iter().map(|s| s.name.as_str()),
            ),
        })
}

/// A `--key` value: a non-empty JSON object of column values.
pub fn parse_key(text: &str) -> Result<Map<String, Value>, TestError> {
    match serde_json::from_str::<Value>(text) {
        Ok(value) => key_object(value),
        Err(e) => Err(TestError::BadKey(format!("not JSON: {e}"))),
    }
}

/// A key given as JSON: it must be a non-empty object of column values.
pub fn key_object(value: Value) -> Result<Map<String, Value>, TestError> {
    match value {
        Value::Object(map) if !map.is_empty() => Ok(map),
        _ => Err(TestError::BadKey(
            "expected a JSON object such as '{\"id\": 1}'".into(),
        )),
    }
}

/// Sends one signed test event for `sub` now, with `client` and `policy` (from
/// [`super::network::http_client`]), and records the attempt with trigger `test`. The event is the
/// row with `key`, or sample values. `before_send` sees the event id, the body and the
/// target just before the request goes out. Never retried.
pub async fn send_test(
    config: &Config,
    sub: &SubscriptionConfig,
    key: Option<Map<String, Value>>,
    client: &reqwest::Client,
    policy: &NetworkPolicy,
    before_send: impl FnOnce(&str, &[u8], Option<&Target>),
) -> Result<TestSent, TestError> {
    let source = connect(&config.source.conninfo, "source.url").await?;
    let (event_key, values) = match key {
        Some(key) => real_row(&source, sub, key).await?,
        None => synthetic_row(&source, sub).await?,
    };
    let event_id = format!("evt_test_{:016x}", rand::random::<u64>());
    let fields = envelope(sub, &event_id, event_key, values);
    let (body, target) = match Rendering::compile(sub).map_err(TestError::Failed)? {
        Some(rendering) => {
            let rendered = rendering
                .render(&fields, Operation::Update)
                .map_err(TestError::Failed)?;
            let body = rendered.body.unwrap_or_else(|| serialise(fields));
            (body, rendered.target)
        }
        None => (serialise(fields), None),
    };
    let method = target
        .as_ref()
        .map_or_else(|| sub.method.for_operation(Operation::Update), |t| t.method);
    // A GET is a bare ping (SPEC §4).
    let body = if method.has_body() { body } else { Vec::new() };

    before_send(&event_id, &body, target.as_ref());
    let attempt = sender::send(client, policy, sub, target.as_ref(), &event_id, &body).await;

    let not_recorded = match config.separate_outbox() {
        Some(outbox) => match connect(outbox, "outbox.url").await {
            Ok(outbox) => record(&outbox, &config.outbox.schema, sub, &attempt).await,
            Err(e) => Err(e.to_string()),
        },
        _ => record(&source, &config.outbox.schema, sub, &attempt).await,
    }
    .err();
    Ok(TestSent {
        event_id,
        body,
        target,
        attempt,
        not_recorded,
    })
}

/// A SQL connection; errors name the config key and never the URL (it may hold a password).
async fn connect(info: &ConnInfo, key: &str) -> Result<Client, TestError> {
    pg::connect_sql(info)
        .await
        .map_err(|e| TestError::Failed(format!("{key}: {e}")))
}

/// The table's columns with their types, in table order.
async fn columns(
    db: &Client,
    sub: &SubscriptionConfig,
) -> Result<Vec<(String, String)>, TestError> {
    let table = &sub.object.config.table;
    let rows = db
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(|e| TestError::Failed(format!("reading the columns of {table}: {e}")))?;
    if rows.is_empty() {
        return Err(TestError::Failed(format!(
            "table {table} not found (or not readable)"
        )));
    }
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The object's fields: the configured ones, or every column.
fn fields(sub: &SubscriptionConfig, columns: &[(String, String)]) -> Vec<String> {
    match &sub.object.config.fields {
        Some(fields) => fields.clone(),
        None => columns.iter().map(|(name, _)| name.clone()).collect(),
    }
}

/// The row named by `key`, read with `to_jsonb`, limited to the object's fields.
async fn real_row(
    db: &Client,
    sub: &SubscriptionConfig,
    key: Map<String, Value>,
) -> Result<(Map<String, Value>, Map<String, Value>), TestError> {
    let columns = columns(db, sub).await?;
    let mut conditions = Vec::new();
    let mut params = Vec::new();
    for (column, value) in &key {
        if !columns.iter().any(|(name, _)| name == column) {
            return Err(TestError::BadKey(format!(
                "table {} has no column {column:?}{}",
                sub.object.config.table,
                crate::suggest::did_you_mean(column, columns.iter().map(|(n, _)| n.as_str()))
            )));
        }
        // Compared as text, so that `1` and `"1"` both find an integer or text key.
        params.push(match value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        });
        conditions.push(format!(
            "t.{}::text = ${}",
            quote_ident(column),
            params.len()
        ));
    }
    let fields = fields(sub, &columns);
    // to_jsonb maps a few types differently from events (SPEC §3): those fields are read
    // again as text in the event's form.
    let overrides: Vec<(&String, String)> = fields
        .iter()
        .filter_map(|field| {
            let (_, data_type) = columns.iter().find(|(name, _)| name == field)?;
            as_event_text(&format!("t.{}", quote_ident(field)), data_type).map(|sql| (field, sql))
        })
        .collect();
    let extra: String = overrides
        .iter()
        .map(|(_, sql)| format!(", {sql}"))
        .collect();
    let sql = format!(
        "SELECT to_jsonb(t)::text{extra} FROM {} t WHERE {} LIMIT 2",
        quote_table(&sub.object.config.table),
        conditions.join(" AND ")
    );
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
        .iter()
        .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let rows = db
        .query(&sql, &params)
        .await
        .map_err(|e| TestError::Failed(format!("reading the row: {e}")))?;
    let (row, texts): (String, Vec<Option<String>>) = match rows.as_slice() {
        [row] => (
            row.get(0),
            (1..=overrides.len()).map(|i| row.get(i)).collect(),
        ),
        [] => {
            return Err(TestError::Failed(format!(
                "no row of {} has key {}",
                sub.object.config.table,
                Value::Object(key)
            )))
        }
        _ => {
            return Err(TestError::BadKey(format!(
                "more than one row of {} matches {}",
                sub.object.config.table,
                Value::Object(key)
            )))
        }
    };
    let mut row: Map<String, Value> = serde_json::from_str(&row)
        .map_err(|e| TestError::Failed(format!("reading the row: {e}")))?;
    for ((field, _), text) in overrides.iter().zip(texts) {
        row.insert((*field).clone(), text.map_or(Value::Null, Value::from));
    }
    let values = fields
        .into_iter()
        .filter_map(|field| row.remove(&field).map(|v| (field, v)))
        .collect();
    Ok((key, values))
}

/// SQL giving `column` as text in its event form (SPEC §3), for the types whose `to_jsonb`
/// form differs: numeric as an exact string, timestamptz in UTC, bytea as base64.
fn as_event_text(column: &str, data_type: &str) -> Option<String> {
    match data_type {
        "numeric" | "money" => Some(format!("{column}::text")),
        "timestamp with time zone" => Some(rfc3339(column, Precision::Micros)),
        "bytea" => Some(format!("translate(encode({column}, 'base64'), E'\\n', '')")),
        _ => None,
    }
}

/// Sample values for the object's key and fields, from the table's column types.
async fn synthetic_row(
    db: &Client,
    sub: &SubscriptionConfig,
) -> Result<(Map<String, Value>, Map<String, Value>), TestError> {
    let columns = columns(db, sub).await?;
    let key_columns = match &sub.object.config.key {
        Some(key) => key.clone(),
        None => primary_key(db, sub).await?,
    };
    let sample_of = |name: &str| {
        columns
            .iter()
            .find(|(column, _)| column == name)
            .map_or(Value::Null, |(_, data_type)| sample(data_type))
    };
    let key = key_columns
        .iter()
        .map(|name| (name.clone(), sample_of(name)))
        .collect();
    let values = fields(sub, &columns)
        .into_iter()
        .map(|name| {
            let value = sample_of(&name);
            (name, value)
        })
        .collect();
    Ok((key, values))
}

/// The primary key columns of the subscription's table, in key order.
async fn primary_key(db: &Client, sub: &SubscriptionConfig) -> Result<Vec<String>, TestError> {
    let table = &sub.object.config.table;
    crate::source::columns::table_columns(db, table)
        .await
        .map_err(|e| TestError::Failed(e.to_string()))
        .map(|columns| columns.unwrap_or_default().primary_key)
}

/// A plausible value of a column of this `information_schema` data type, mapped as SPEC §3
/// maps real values; `null` for types without an obvious sample.
fn sample(data_type: &str) -> Value {
    match data_type {
        "smallint" | "integer" | "bigint" => Value::from(1),
        "numeric" | "money" => Value::from("1.00"),
        "real" | "double precision" => Value::from(1.5),
        "boolean" => Value::from(true),
        "text" | "character varying" | "character" => Value::from("test"),
        "date" => Value::from("2026-01-01"),
        "timestamp with time zone" => Value::from("2026-01-01T00:00:00Z"),
        "timestamp without time zone" => Value::from("2026-01-01 00:00:00"),
        "time without time zone" => Value::from("12:00:00"),
        "uuid" => Value::from("00000000-0000-0000-0000-000000000000"),
        "json" | "jsonb" => Value::Object(Map::new()),
        "ARRAY" => Value::Array(Vec::new()),
        _ => Value::Null,
    }
}

/// The SPEC §3 envelope of a test `update`: no previous values, no WAL position.
fn envelope(
    sub: &SubscriptionConfig,
    id: &str,
    key: Map<String, Value>,
    values: Map<String, Value>,
) -> Map<String, Value> {
    let table = &sub.object.config.table;
    let body = serde_json::json!({
        "id": id,
        "type": sub.event_type_for(Operation::Update),
        "timestamp": crate::time::rfc3339(SystemTime::now()),
        "object": sub.object.name,
        "operation": Operation::Update.as_str(),
        "key": key,
        "values": values,
        "previous": {},
        "changed": [],
        "source": {"table": table.to_string(), "lsn": null, "txid": null},
    });
    match body {
        Value::Object(fields) => fields,
        _ => unreachable!("built as an object"),
    }
}

/// Adds the attempt to the attempt log. The error says why it was not recorded; it never
/// fails the test: the request has been sent, which is what the user asked for.
async fn record(
    db: &Client,
    schema: &str,
    sub: &SubscriptionConfig,
    attempt: &Attempt,
) -> Result<(), String> {
    let attempt = TestAttempt {
        subscription: &sub.name,
        started_at: attempt.started_at,
        duration: attempt.duration,
        status: attempt.status,
        error: attempt.error.as_deref(),
        response_excerpt: &attempt.response_excerpt,
    };
    attempts::record_test(db, schema, &attempt)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_follow_the_spec_type_mapping() {
        assert_eq!(sample("integer"), Value::from(1));
        assert_eq!(sample("numeric"), Value::from("1.00"));
        assert_eq!(sample("boolean"), Value::from(true));
        assert_eq!(sample("tsvector"), Value::Null);
    }
}

//! Typed reads of a test database's outbox (`sql/0001_outbox.sql`): every delivery and every
//! attempt as Rust values, read with a real Postgres client instead of splitting psql's text.
//! The tests assert on walhook's tables as a user reading them would, so these readers name
//! the tables here, not through walhook's own outbox code.

use tokio_postgres::{NoTls, Row};

use super::TestDb;

/// One row of `walhook.delivery` with its event's id and key.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: i64,
    pub subscription: String,
    /// `(no event)` when the event row is gone (which nothing may do while a delivery
    /// refers to it).
    pub event_id: String,
    /// The event's row key (`{"id": 1}`); null when the event row is gone.
    pub key: serde_json::Value,
    /// `pending`, `delivered` or `dead`.
    pub status: String,
    pub attempts: i32,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    /// Whether a worker holds a lease on it (`leased_until` is set).
    pub leased: bool,
}

impl Delivery {
    /// The `id` of the event key, for tables keyed by an integer `id`.
    pub fn key_id(&self) -> i64 {
        self.key["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("no integer key.id in {self:?}"))
    }
}

/// One row of `walhook.attempt`.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// None for a `walhook test` request.
    pub delivery_id: Option<i64>,
    pub subscription: String,
    /// The attempt's number for its delivery, from 1.
    pub attempt: i32,
    /// `scheduled`, `replay` or `test`.
    pub trigger: String,
    pub duration_ms: Option<i32>,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
}

/// Every delivery, oldest first.
pub fn deliveries(db: &TestDb<'_>) -> Vec<Delivery> {
    query(
        db,
        "SELECT d.id, d.subscription, coalesce(e.event_id, '(no event)'), e.key, d.status, \
                d.attempts, d.last_status_code, d.last_error, d.leased_until IS NOT NULL \
         FROM walhook.delivery d LEFT JOIN walhook.event e ON e.seq = d.event_seq \
         ORDER BY d.id",
    )
    .iter()
    .map(|row| Delivery {
        id: row.get(0),
        subscription: row.get(1),
        event_id: row.get(2),
        key: row
            .get::<_, Option<String>>(3)
            .map(|key| serde_json::from_str(&key).expect("an event key is JSON"))
            .unwrap_or_default(),
        status: row.get(4),
        attempts: row.get(5),
        last_status_code: row.get(6),
        last_error: row.get(7),
        leased: row.get(8),
    })
    .collect()
}

/// Every attempt in the order the requests started (by delivery within a batch).
pub fn attempts(db: &TestDb<'_>) -> Vec<Attempt> {
    query(
        db,
        "SELECT delivery_id, subscription, attempt, trigger, duration_ms, status_code, error, \
                response_excerpt \
         FROM walhook.attempt ORDER BY started_at, delivery_id, id",
    )
    .iter()
    .map(|row| Attempt {
        delivery_id: row.get(0),
        subscription: row.get(1),
        attempt: row.get(2),
        trigger: row.get(3),
        duration_ms: row.get(4),
        status_code: row.get(5),
        error: row.get(6),
        response_excerpt: row.get(7),
    })
    .collect()
}

/// Runs one query as the superuser on a connection of its own. On a thread of its own too,
/// with a runtime of its own, so that a `#[tokio::test]` may call it as well as a plain test.
fn query(db: &TestDb<'_>, sql: &str) -> Vec<Row> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the query");
                runtime.block_on(async {
                    let (client, connection) = tokio_postgres::connect(&db.url, NoTls)
                        .await
                        .unwrap_or_else(|e| panic!("connect to {}: {e}", db.name));
                    let connection = tokio::spawn(connection);
                    let rows = client
                        .query(sql, &[])
                        .await
                        .unwrap_or_else(|e| panic!("{sql}: {e}"));
                    drop(client);
                    let _ = connection.await;
                    rows
                })
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

//! The error of a statement of the outbox store.

/// A statement against the outbox failed; `what` says what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct StoreError {
    /// What was being done, e.g. `reading the subscriptions' state`.
    pub what: String,
    /// The database error.
    pub source: tokio_postgres::Error,
}

impl StoreError {
    /// A `map_err` adapter naming what was being done.
    pub fn at(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
        let what = what.into();
        move |source| StoreError { what, source }
    }
}

//! Leases left behind: a walhook that was killed held leases on the deliveries it had in
//! flight; the next one to start releases them so they are sent again (at-least-once).

use tokio_postgres::Client;

use crate::pg::quote_ident;

/// Releases the leases of pending deliveries of `subscriptions`; how many there were.
pub async fn release(
    db: &Client,
    schema: &str,
    subscriptions: &[&str],
) -> Result<u64, tokio_postgres::Error> {
    db.execute(
        &format!(
            "UPDATE {}.delivery SET leased_until = NULL \
             WHERE status = 'pending' AND leased_until IS NOT NULL \
               AND subscription = ANY($1::text[])",
            quote_ident(schema)
        ),
        &[&subscriptions],
    )
    .await
}

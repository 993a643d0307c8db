//! The capture checkpoint of a slot as `setup` and start-up read and move it (the writer
//! advances it with every commit), and whose it is: the source (cluster system identifier and database) recorded with
//! a slot's checkpoint, so that a second source sharing the outbox under the same slot name
//! is refused instead of reading and moving the first one's position.

use tokio_postgres::Client;

use crate::pg::quote_ident;
use crate::pg::Lsn;
use crate::source::setup::SetupError;
use crate::source::slot::SourceId;

/// Makes the checkpoint of `slot`, if there is one, this source's: a row without a source
/// (written before migration 0003, or just now by the writer) is claimed; a row of another
/// source is an error that names both.
pub async fn claim_checkpoint(
    outbox: &Client,
    schema: &str,
    slot: &str,
    source: &SourceId,
) -> Result<(), SetupError> {
    let s = quote_ident(schema);
    let context = || format!("claiming the checkpoint of slot {slot:?} in schema {schema}");
    outbox
        .execute(
            &format!(
                "UPDATE {s}.checkpoint SET system_identifier = $2, database = $3 \
                 WHERE slot = $1 AND system_identifier IS NULL"
            ),
            &[&slot, &source.system_identifier, &source.database],
        )
        .await
        .map_err(|e| SetupError::sql(context(), &e, None))?;
    let row = outbox
        .query_opt(
            &format!("SELECT system_identifier, database FROM {s}.checkpoint WHERE slot = $1"),
            &[&slot],
        )
        .await
        .map_err(|e| SetupError::sql(context(), &e, None))?;
    let Some(row) = row else { return Ok(()) };
    let owner = SourceId {
        system_identifier: row.get::<_, Option<String>>(0).unwrap_or_default(),
        database: row.get::<_, Option<String>>(1).unwrap_or_default(),
    };
    if &owner == source {
        return Ok(());
    }
    Err(SetupError::Sql {
        context: context(),
        code: None,
        message: format!(
            "it belongs to another source (database {:?} of system {}), not this one \
             (database {:?} of system {}): two sources share this outbox under one slot name",
            owner.database, owner.system_identifier, source.database, source.system_identifier
        ),
        fix: Some(
            "give each source its own source.slot (or its own outbox.schema); walhook changed \
             nothing"
                .to_owned(),
        ),
    })
}

/// The checkpoint of `slot` in the outbox: the last commit whose events it holds.
pub async fn read(outbox: &Client, schema: &str, slot: &str) -> Result<Option<Lsn>, SetupError> {
    let lsn = text(outbox, schema, slot).await.map_err(|e| {
        SetupError::sql(format!("reading the checkpoint of slot {slot:?}"), &e, None)
    })?;
    Ok(lsn.and_then(|lsn| lsn.parse().ok()))
}

/// The checkpoint of `slot` as Postgres prints an LSN (`0/16B3748`).
pub async fn text(
    outbox: &Client,
    schema: &str,
    slot: &str,
) -> Result<Option<String>, tokio_postgres::Error> {
    Ok(outbox
        .query_opt(
            &format!(
                "SELECT commit_lsn::text FROM {}.checkpoint WHERE slot = $1",
                quote_ident(schema)
            ),
            &[&slot],
        )
        .await?
        .map(|row| row.get(0)))
}

/// Sets the checkpoint of `slot` to `lsn`: transactions committed at or before it are
/// taken as captured.
pub async fn write(outbox: &Client, schema: &str, slot: &str, lsn: Lsn) -> Result<(), SetupError> {
    outbox
        .execute(
            &format!(
                "INSERT INTO {}.checkpoint (slot, commit_lsn) VALUES ($1, $2::text::pg_lsn) \
                 ON CONFLICT (slot) DO UPDATE \
                 SET commit_lsn = EXCLUDED.commit_lsn, updated_at = now()",
                quote_ident(schema)
            ),
            &[&slot, &lsn.to_string()],
        )
        .await
        .map_err(|e| {
            SetupError::sql(format!("setting the checkpoint of slot {slot:?}"), &e, None)
        })?;
    Ok(())
}

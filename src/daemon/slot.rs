//! The exactly-once rule between the slot and the outbox's checkpoint (SPEC §8), for `run`
//! at start-up and for `walhook setup`: a slot is created only where the outbox has no
//! checkpoint for it, and a new slot's consistent point becomes its checkpoint.

use tokio_postgres::Client;

use crate::config::format_size;
use crate::outbox::checkpoint::{self, claim_checkpoint};
use crate::pg::ConnInfo;
use crate::source::setup::SetupError;
use crate::source::slot::{create_slot, slot_state, source_id, SlotState};

/// Creates slot `slot` if it is missing and reports it if it is in place, for `setup` and
/// for `run` at start-up. Returns the lines to print.
///
/// A missing slot for which the outbox holds a checkpoint was dropped behind walhook's back:
/// creating it anew would silently skip the changes since, so that is an error (SPEC §8)
/// until the user runs `setup --recreate-slot`. So is a lost or foreign slot. A new slot's
/// consistent point is recorded as its checkpoint, so that a later disappearance is noticed
/// even before the first event.
pub async fn ensure_slot(
    info: &ConnInfo,
    source: &Client,
    outbox: &Client,
    schema: &str,
    slot: &str,
) -> Result<Vec<String>, SetupError> {
    let id = source_id(info).await?;
    claim_checkpoint(outbox, schema, slot, &id).await?;
    let lines = ensure_slot_of(info, source, outbox, schema, slot).await?;
    // A checkpoint written just now (for a new slot) is claimed too.
    claim_checkpoint(outbox, schema, slot, &id).await?;
    Ok(lines)
}

async fn ensure_slot_of(
    info: &ConnInfo,
    source: &Client,
    outbox: &Client,
    schema: &str,
    slot: &str,
) -> Result<Vec<String>, SetupError> {
    match slot_state(source, slot).await? {
        SlotState::Missing => {
            if let Some(checkpoint) = checkpoint::read(outbox, schema, slot).await? {
                return Err(SetupError::SlotDropped {
                    slot: slot.to_owned(),
                    checkpoint,
                });
            }
            let point = create_slot(info, slot).await?;
            checkpoint::write(outbox, schema, slot, point).await?;
            Ok(vec![format!("created slot {slot:?} at {point}")])
        }
        SlotState::Ready {
            active_pid,
            confirmed_flush,
            retained_bytes,
        } => Ok(vec![format!(
            "slot {slot:?} already in place (pgoutput, confirmed up to {confirmed_flush}, \
             retaining {} of WAL){}",
            format_size(retained_bytes),
            active_pid
                .map(|pid| format!("; in use by process {pid} (a running walhook?)"))
                .unwrap_or_default()
        )]),
        state @ (SlotState::Lost | SlotState::WrongKind { .. }) => Err(SetupError::SlotUnusable {
            slot: slot.to_owned(),
            reason: state.unusable_reason().unwrap_or_default(),
        }),
    }
}

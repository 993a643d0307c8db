//! Writes events, deliveries and the checkpoint in one transaction.

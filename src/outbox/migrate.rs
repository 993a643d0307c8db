//! Applies the numbered migrations in `sql/` (owner: setup work).

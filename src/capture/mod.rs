//! The capture side: decoded pgoutput messages become committed transactions of typed row
//! changes, and row changes become event envelopes.

pub mod bounds;
pub mod document;
pub mod change;
pub mod envelope;
pub mod matcher;
pub mod reader;
pub mod relation;
pub mod render;
pub mod template;
pub mod when;
pub mod window;

pub use change::{Cell, Operation, RowChange};
pub use envelope::{Commit, ObjectView};
pub use reader::{ChangeReader, Item};
pub use relation::{Relation, RelationCache};

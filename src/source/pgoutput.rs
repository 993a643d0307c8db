//! TODO(owner: see ARCHITECTURE)

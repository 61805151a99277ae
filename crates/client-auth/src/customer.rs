//! Customer tokens (placeholder being written).

//! Temporal cache stage: time-decayed item popularity and precomputed similarity rows of hot items.

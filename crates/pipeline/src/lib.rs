//! Composes the stages into the recommendation path; indexing, events, per-stage timings.

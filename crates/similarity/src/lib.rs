//! Similarity stage: exact inner product over every item and top-K selection.

//! Rerank stage: multi-head attention of candidates over the user's history and context.

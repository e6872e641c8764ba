//! Query encoder stage: all-MiniLM-L6-v2 (candle BERT on CPU), tokenization, pooling, LRU cache, model provisioning.

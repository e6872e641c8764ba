//! Offline quality evaluation on MovieLens: protocol, metrics, baselines and pipeline variants.

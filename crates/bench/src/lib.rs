//! The latency/QPS suite: scenarios, measurement, reports, regression gating.

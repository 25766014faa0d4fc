"""Per-exit statistics, stages, compute and latency."""

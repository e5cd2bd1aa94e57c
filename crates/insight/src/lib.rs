//! Per-fingerprint statistics, latency histograms, slow log, N+1 detection (see issue 4).

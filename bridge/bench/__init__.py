"""Benchmarks: `bridge bench audio` (transcoder) and the call capacity/latency benchmark."""

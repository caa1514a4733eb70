"""Benchmarks: each prints ratios against a baseline measured in the same process.

Run from the repository root: ``python -m benchmarks`` (all), or one of
``python -m benchmarks.bench_core``, ``.bench_latency``, ``.bench_metrics``.
Results and the commands that produced them are in BENCHMARKS.md.
"""

"""Prometheus metrics: jobs by status, queue lengths, epoch durations, HTTP latency."""

"""Optimizer-step benchmarks: `python -m benchmarks.bench` (or `make bench`)."""

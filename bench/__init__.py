"""Benchmarks, outside the test suite: `make bench` runs bench.run."""

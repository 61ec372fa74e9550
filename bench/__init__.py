"""Benchmarks: `python -m bench.run` (make bench). Not shipped in the image, not part of the tests."""

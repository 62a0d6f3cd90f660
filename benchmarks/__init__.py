"""Benchmarks of idir_fast: ``python -m benchmarks`` (= ``idir-fast bench --results-dir benchmarks/results``) and
pytest-benchmark tests (``python -m pytest benchmarks --benchmark-only``)."""

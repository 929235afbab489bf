"""meterguard's benchmark harness (not part of the test suite): ``make bench`` / ``python -m benchmarks``.

The arms, the two harnesses and the targets are those of BENCHMARKS.md; results are written
between markers into docs/benchmarks.md. No test asserts a timing.
"""

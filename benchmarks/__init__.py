"""Benchmarks of fastconv against cuDNN eager and torch.compile (``pytest benchmarks/``).

Not a test suite: nothing here asserts a timing. Run with
``pytest benchmarks/ --benchmark-only [--benchmark-json RESULTS.json]`` and render a saved
run with ``python -m benchmarks.report RESULTS.json``.
"""

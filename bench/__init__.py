"""Benchmarks: each module is one command that prints its figures (``python -m bench.NAME``)."""

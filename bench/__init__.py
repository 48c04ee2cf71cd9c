"""Benchmarks and soak runs of the whole stack; not part of the service."""

"""Benchmarks: scripts that write their numbers to ``benchmarks/results``."""

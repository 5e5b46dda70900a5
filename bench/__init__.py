"""Benchmarks: timing targets live here, never in tests."""

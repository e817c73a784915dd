"""Smoke runs of the benchmark scripts."""

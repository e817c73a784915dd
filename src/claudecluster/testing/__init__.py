"""Deterministic fixtures shared by tests, the demo and the simulations (no I/O here)."""

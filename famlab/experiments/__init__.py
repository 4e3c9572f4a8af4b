"""Scripted experiments (each a `make` target)."""

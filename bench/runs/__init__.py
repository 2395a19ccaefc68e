"""Runs: their specs and keys, the run store, and running one cell."""

"""Benchmark harness for parameter-efficient tuning of fusion-based vision-language detectors."""

__version__ = "0.1.0"

"""The method framework: configs, the ``Method`` contract, parameter accounting, tuned-state files.

Concrete methods live in the top-level ``methods`` package, one module each.
"""

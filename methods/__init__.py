"""Tuning methods, one module each. Every module registers itself with
``bench.tuning.base.register_method``; importing this package imports them all."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

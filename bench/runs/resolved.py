"""What a run resolves to: its method config, protocol and catalog entry with every default filled in.

A spec names a method, a protocol and a dataset and carries only what the user changed; what the
run computes also depends on the defaults behind those names, which code changes move. So the run
key hashes the resolved values (a changed default makes new keys by itself, without anyone bumping
:data:`bench.runs.record.RESULTS_VERSION`), and every record stores them, so an old result can say
what produced it. The executor builds its method from :func:`resolved_method`, the same function
the key was computed from.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, Mapping

from bench.catalog import DatasetSpec
from bench.runs.record import RunSpec
from bench.train.protocol import KEYED_WHEN_SET, UNKEYED_PROTOCOL_FIELDS, resolve_protocol
from bench.tuning.base import Method, build_method
from bench.tuning.search import with_values


def resolved_method(spec: RunSpec) -> Method:
    """The method of ``spec``: its options over the defaults (and a preset's), then the tuned values."""
    method = build_method(spec.method, dict(spec.method_options))
    return type(method)(with_values(method.config, spec.tuned_values)) if spec.tuned_values else method


def resolved_settings(spec: RunSpec, dataset: DatasetSpec) -> dict[str, Any]:
    """``method_config``, ``protocol`` (for the spec's shots, with its overrides) and ``dataset`` (the
    catalog entry, less the path of the file it was read from) as plain JSON values."""
    protocol = resolve_protocol(spec.protocol, spec.shots_label, spec.protocol_overrides)
    entry = {name: value for name, value in asdict(dataset).items() if name != "source"}
    return _plain({"method_config": resolved_method(spec).config.to_dict(), "protocol": protocol.to_dict(), "dataset": entry})


def keyed_settings(settings: Mapping[str, Any], method_keyed_when_set: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The part of :func:`resolved_settings` that the run key hashes: the method config and the
    protocol's fields that change a number. The catalog entry is already part of the data
    fingerprint (:func:`bench.runs.fingerprint.dataset_fingerprint`). Fields added after results
    existed are keyed only when they differ from the value that reproduces the runs made before them
    (:data:`bench.train.protocol.KEYED_WHEN_SET`; a method config's ``keyed_when_set``)."""
    protocol = {name: value for name, value in settings["protocol"].items() if name not in UNKEYED_PROTOCOL_FIELDS
                and not (name in KEYED_WHEN_SET and value == KEYED_WHEN_SET[name])}
    method_defaults = method_keyed_when_set or {}
    method = {name: value for name, value in settings["method_config"].items()
              if not (name in method_defaults and value == method_defaults[name])}
    return {"method_config": method, "protocol": protocol}


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    """JSON's view of ``values``: tuples become lists, integer keys strings, paths text."""
    return json.loads(json.dumps(values, sort_keys=True, default=str))

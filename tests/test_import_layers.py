"""The import graph of ``bench/`` points downward only.

Each top-level part of the framework has a layer; a module may import its own part and anything in a
lower layer, never a higher one, so a low-level change cannot pull in the runner, the report or a
plugin. Every import counts, including those inside functions (imported late for speed, they are
still dependencies). Tuning methods are plugins: the framework finds them through an entry-point
group (bench.registry), never by importing the ``methods`` package, and the plugins may only use the
layers that declare extension points.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.registry import Registry

REPOSITORY = Path(__file__).resolve().parents[1]

LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "files", "detections"),
    ("registry", "options", "devices", "sweep_file"),
    ("eval", "data"),
    ("catalog", "models"),
    ("catalog_check", "tuning"),
    ("train",),
    ("runs",),
    ("launch", "report", "pretrain", "profile"),
    ("cli",),
)
LAYER_OF = {part: level for level, parts in enumerate(LAYERS) for part in parts}
PLUGIN_PACKAGE = "methods"
PLUGIN_MAY_USE = ("errors", "options", "models", "tuning")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every absolute module an import statement of ``path`` names, with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            if node.module == "bench":  # from bench import catalog_check
                found += [(node.lineno, f"bench.{alias.name}") for alias in node.names]
    return found


def bench_part(module: str) -> str | None:
    """``bench.runs.plan`` -> ``runs``; None for modules outside the framework."""
    parts = module.split(".")
    return parts[1] if parts[0] == "bench" and len(parts) > 1 else None


def framework_files() -> list[Path]:
    return sorted(p for p in (REPOSITORY / "bench").rglob("*.py") if p.name != "__init__.py" or p.parent.name != "bench")


def test_every_part_of_the_framework_has_a_layer() -> None:
    parts = {p.relative_to(REPOSITORY / "bench").parts[0].removesuffix(".py") for p in framework_files()}
    assert parts <= set(LAYER_OF), f"give these parts of bench/ a layer in LAYERS: {sorted(parts - set(LAYER_OF))}"


@pytest.mark.parametrize("path", framework_files(), ids=lambda p: str(p.relative_to(REPOSITORY)))
def test_framework_imports_point_downward(path: Path) -> None:
    own = path.relative_to(REPOSITORY / "bench").parts[0].removesuffix(".py")
    upward = []
    for line, module in imported_modules(path):
        if module.split(".")[0] == PLUGIN_PACKAGE:
            upward.append(f"line {line}: {module} (a plugin package: reach it through its registry)")
        part = bench_part(module)
        if part is not None and part != own and LAYER_OF[part] >= LAYER_OF[own]:
            upward.append(f"line {line}: {module} (layer {LAYER_OF[part]} from layer {LAYER_OF[own]})")
    assert not upward, f"{path.relative_to(REPOSITORY)} imports upward: " + "; ".join(upward)


@pytest.mark.parametrize("path", sorted((REPOSITORY / PLUGIN_PACKAGE).rglob("*.py")), ids=lambda p: p.name)
def test_plugins_use_only_the_extension_layers(path: Path) -> None:
    beyond = [f"line {line}: {module}" for line, module in imported_modules(path)
              if (part := bench_part(module)) is not None and part not in PLUGIN_MAY_USE]
    assert not beyond, f"{path.relative_to(REPOSITORY)} reaches past the extension points: {beyond}"


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The walk finds late imports inside functions, where the arrows that were removed used to hide."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    import methods\n    from bench.runs.plan import Cell\n")
    assert imported_modules(sample) == [(2, "methods"), (3, "bench.runs.plan")]


def test_methods_are_found_through_their_entry_point_group() -> None:
    """In a fresh interpreter the framework has not imported ``methods`` until the registry is read."""
    probe = ("import sys; from bench.tuning.base import METHODS, build_method; "
             "before = 'methods' in sys.modules; names = METHODS.names(); "
             "print(before, 'methods' in sys.modules, 'sdpt' in names)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPOSITORY)
    assert out.stdout.split() == ["False", "True", "True"]


def test_an_empty_plugin_group_says_how_to_install() -> None:
    registry: Registry[object] = Registry("widget", plugin_group="vl_peft_bench.no-such-group")
    with pytest.raises(BenchError, match=r"pip install -e \."):
        registry.names()

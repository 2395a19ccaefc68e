"""Bad input is refused before any cell starts, and a results store with finished results survives it.

One real tiny sweep (glip-nano, linear-probe on shapes-colours, two steps) fills a results folder
once per module. Every case below then gives ``bench.cli.main`` one bad option, file or dataset
against a copy of that folder and proves the battery's guarantees:

* the exit code is 2 (a :class:`bench.errors.BenchError`, or argparse's own exit for what the parser
  refuses) and nothing raises out of ``main``;
* stderr is one paragraph (one per failing dataset for the data check) that starts with ``error: ``
  (argparse: its ``usage:`` block then ``run_bench.py: error: ``), names the offending value or file
  and says how to fix it, and holds no ``Traceback``;
* no warning comes from the project's code (``bench/``, ``methods/``): users see errors, not warnings;
* the results folder is byte-identical afterwards: the same files and folders, the same bytes, so in
  particular nothing new under ``runs/work`` (no cell started) or ``runs/done``.

A last test checks that every ``--option`` the code's messages tell users to pass is one that
``run_bench.py`` (or ``run_bench.py report``) accepts.
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from bench.cli import build_eval_parser, build_parser, build_report_parser, main
from tests.run_support import TINY_PROTOCOL, synthetic_cache

REPO = Path(__file__).resolve().parents[1]
DATASET = "shapes-colours"
TINY = [a for key in ("max_steps", "warmup_steps", "eval_every", "batch_size")
        for a in ("--protocol-set", f"{key}={TINY_PROTOCOL[key]}")]


# --------------------------------------------------------------------------------------------------
# The finished results every case must leave alone, and the checks of a refusal


@dataclass(frozen=True)
class Store:
    results: Path  # holds one finished result; cases work on copies of it
    cache: Path  # the synthetic-data cache (shapes-colours)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    cache = synthetic_cache(tmp_path_factory, [DATASET])
    results = tmp_path_factory.mktemp("bad-input") / "results"
    assert main(sweep_args(results, cache)) == 0
    assert len(list((results / "runs" / "done").glob("*.json"))) == 1
    return Store(results, cache)


@pytest.fixture
def results(store, tmp_path) -> Path:
    """A private copy of the finished results, so that one failing case cannot spoil the others."""
    copy = tmp_path / "results"
    shutil.copytree(store.results, copy)
    return copy


@pytest.fixture(autouse=True)
def no_project_warnings():
    """A bad input is an error message, never a raw Python warning from the project's code."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    ours = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught
            if Path(w.filename).resolve().is_relative_to(REPO / "bench") or Path(w.filename).resolve().is_relative_to(REPO / "methods")]
    assert not ours, ours


def sweep_args(results: Path, cache: Path, *extra: str) -> list[str]:
    """The module's valid tiny sweep; ``extra`` options come last, so they replace earlier ones."""
    return ["--methods", "linear-probe", "--datasets", DATASET, "--protocol", "shapes", *TINY, "--no-progress",
            "--device", "cpu", "--results", str(results), "--cache-dir", str(cache), *extra]


def snapshot(root: Path) -> dict[str, str]:
    """Every file (its SHA-256) and folder below ``root``, by relative path."""
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(root.rglob("*"))}


def differences(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return [f"{'added' if k not in before else 'removed' if k not in after else 'changed'}: {k}"
            for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]


def refused(capsys, argv: list[str], results: Path, *names: str, absent: tuple[str, ...] = (),
            parser: bool = False, paragraphs: int = 1) -> str:
    """Run ``main(argv)`` and check that it refused as this module promises; the stderr text.

    ``names``: what the message must name (the value, the file, the option that fixes it);
    ``absent``: what neither stdout nor stderr may say; ``parser``: refused by argparse; ``paragraphs``: at most.
    """
    before = snapshot(results)
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse
        code = exit.code
    except Exception as err:  # noqa: BLE001 - the point is that nothing escapes
        pytest.fail(f"main raised {type(err).__name__}: {err} instead of printing a one-paragraph error")
    out, err = capsys.readouterr()
    assert code == 2, f"exit code {code}\nstdout: {out}\nstderr: {err}"
    assert "Traceback" not in out + err, err
    if parser:
        assert err.startswith("usage: ") and "\nrun_bench.py: error: " in err, err
        assert "\n\n" not in err.strip(), err
    else:
        assert err.startswith("error: "), err
        found = err.removeprefix("error: ").strip().split("\n\n")
        assert len(found) <= paragraphs and all(p and "\n" not in p for p in found), err
    for name in names:
        assert name in err, f"{name!r} is not in the message: {err}"
    for wrong in absent:
        assert wrong not in out + err, f"{wrong!r} should not be printed:\nstdout: {out}\nstderr: {err}"
    assert "cells: " not in out, f"cells were planned to run: {out}"
    assert differences(before, snapshot(results)) == [], "the results folder changed"
    return err


# --------------------------------------------------------------------------------------------------
# Options


OPTION_CASES = [
    pytest.param(["--methods", "sdpt", "--method-set", "sdpt.num_tokens=abc"], ["num_tokens", "'abc'", "--method-set sdpt.num_tokens="],
                 id="method-option-text"),
    pytest.param(["--methods", "sdpt", "--method-set", "sdpt.num_tokens=2.5"], ["num_tokens", "2.5", "--method-set sdpt.num_tokens="],
                 id="method-option-fraction"),
    pytest.param(["--method-set", "linear-probe.bogus=1"], ["'bogus'", "valid options: lr"], id="method-option-unknown"),
    pytest.param(["--method-set", "lora.rank=4"], ["'lora'", "not in --methods"], id="method-option-for-another-method"),
    pytest.param(["--device", "gpu"], ["'gpu'", "cpu", "cuda"], id="device-gpu"),
    pytest.param(["--model", "glip-t"], ["glip-t", "--weights", "--random-init"], id="glip-t-without-weights"),
    pytest.param(["--jobs", "0"], ["--jobs 0", "at least 1"], id="jobs-0"),
    pytest.param(["--executor", "slurm", "--cells-per-task", "0"], ["--cells-per-task 0", "at least 1 cell"],
                 id="cells-per-task-0"),
    pytest.param(["--frozen-cache-gib", "-1"], ["--frozen-cache-gib -1.0", "0 or more GiB"], id="frozen-cache-negative"),
    pytest.param(["--protocol-set", "attention=fast"], ["attention", "'fast'", "'sdpa'"], id="protocol-attention"),
    pytest.param(["--protocol-set", "activation_checkpointing=some"], ["activation_checkpointing", "'official'"],
                 id="protocol-checkpointing"),
    pytest.param(["--protocol-set", "max_steps=abc"], ["max_steps", "'abc'", "--protocol-set max_steps="], id="protocol-field-text"),
    pytest.param(["--protocol-set", "selection=bogus"], ["selection", "'bogus'", "'best-val'", "'last'"], id="protocol-selection"),
    pytest.param(["--protocol-set", "bogus=1"], ["['bogus']", "valid fields:", "max_steps"], id="protocol-field-unknown"),
]


@pytest.mark.parametrize("extra, names", OPTION_CASES)
def test_a_bad_option_is_refused_before_any_cell(capsys, store, results, extra, names):
    refused(capsys, sweep_args(results, store.cache, *extra), results, *names)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_on_a_machine_without_a_gpu_is_refused(capsys, store, results):
    refused(capsys, sweep_args(results, store.cache, "--device", "cuda"), results, "--device cuda", "--device cpu")


@pytest.mark.skipif(torch.cuda.device_count() > 7, reason="this machine has a GPU 7")
def test_a_gpu_number_this_machine_lacks_is_refused(capsys, store, results):
    refused(capsys, sweep_args(results, store.cache, "--device", "cuda:7"), results, "--device cuda:7")


@pytest.mark.parametrize(
    "option, value, says",
    [
        ("--shots", "", "argument --shots: shots must be positive integers or 'full', got an empty list"),
        ("--shots", "0", "argument --shots: shots must be positive integers or 'full', got '0'"),
        ("--seeds", "", "argument --seeds: expected comma-separated integers, got an empty list"),
        ("--split-seeds", "", "argument --split-seeds: split seeds are integers or 'glip', got an empty list"),
    ],
    ids=["shots-empty", "shots-0", "seeds-empty", "split-seeds-empty"],
)
def test_a_value_the_parser_refuses(capsys, store, results, option, value, says):
    refused(capsys, sweep_args(results, store.cache, option, value), results, says, parser=True)


def test_random_init_and_weights_contradict(capsys, store, results):
    from bench.models.glip.model import NANO_WEIGHTS

    refused(capsys, sweep_args(results, store.cache, "--random-init", "--weights", str(NANO_WEIGHTS)), results,
            "--random-init", f"--weights {NANO_WEIGHTS}")


def test_an_empty_tokenizer_folder_is_named(capsys, store, results, tmp_path):
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    refused(capsys, sweep_args(results, store.cache, "--tokenizer", str(folder)), results, str(folder), "--tokenizer DIR")


def test_results_that_are_a_file_are_refused(capsys, store, tmp_path):
    """``--results`` naming a regular file (root ignores folder permissions, so a file stands in for
    an unwritable folder): one paragraph naming it, and the file left as it was."""
    path = tmp_path / "results.txt"
    path.write_text("my notes, not a results folder\n")
    refused(capsys, sweep_args(path, store.cache), path, str(path), "--results")


# --------------------------------------------------------------------------------------------------
# Weights


@pytest.fixture(scope="module")
def bad_weights(tmp_path_factory) -> dict[str, Path]:
    """Files and folders that are not glip-nano's weights, by case id."""
    from safetensors.torch import load_file, save_file

    from bench.models.glip.model import NANO_WEIGHTS

    folder = tmp_path_factory.mktemp("weights")
    text = folder / "weights.txt"
    text.write_text("hello, these are not weights\n")
    cut = folder / "cut.safetensors"
    cut.write_bytes(NANO_WEIGHTS.read_bytes()[: NANO_WEIGHTS.stat().st_size // 2])
    dino = folder / "grounding-dino-tiny"
    dino.mkdir()
    (dino / "config.json").write_text(json.dumps({"model_type": "grounding-dino"}))
    tensors = load_file(NANO_WEIGHTS)
    name = sorted(k for k in tensors if tensors[k].dim() == 2)[0]
    save_file({k: v for k, v in tensors.items() if k != name}, folder / "one-tensor-less.safetensors")
    wider = torch.zeros(tensors[name].shape[0] + 1, *tensors[name].shape[1:])
    save_file({**tensors, name: wider}, folder / "other-shape.safetensors")
    return {"text-file": text, "truncated-safetensors": cut, "grounding-dino-folder": dino,
            "tensor-missing": folder / "one-tensor-less.safetensors", "tensor-reshaped": folder / "other-shape.safetensors",
            "tensor-name": Path(name)}


@pytest.mark.parametrize(
    "case, names, absent",
    [
        pytest.param("text-file", ["cannot be read"], [], id="text-file"),
        pytest.param("truncated-safetensors", ["cannot be read", "truncated"], [], id="truncated-safetensors"),
        # the folder exists: the message says what it is and how to choose the model that reads it
        pytest.param("grounding-dino-folder", ["--model"], ["does not exist"], id="grounding-dino-folder"),
        pytest.param("tensor-missing", ["not in the file", "--model"], [], id="tensor-missing"),
        pytest.param("tensor-reshaped", ["other shapes", "--model"], [], id="tensor-reshaped"),
    ],
)
def test_weights_glip_nano_cannot_load_are_refused(capsys, store, results, bad_weights, case, names, absent):
    path = bad_weights[case]
    err = refused(capsys, sweep_args(results, store.cache, "--weights", str(path)), results, str(path), *names,
                  absent=tuple(absent))
    if case.startswith("tensor-"):
        assert str(bad_weights["tensor-name"]) in err


# --------------------------------------------------------------------------------------------------
# Your own datasets: a catalog folder and COCO-format data on disk

SIZE = 16
YAML = """\
datasets:
  {name}:
    description: a tiny COCO-format dataset of the bad-input tests
    root: {name}
{extra}    splits:
      train: {{images: train, annotations: train.json}}
      val: {{images: val, annotations: val.json}}
      test: {{images: test, annotations: test.json}}
"""


@dataclass(frozen=True)
class UserData:
    catalog: Path  # the --catalog folder
    data_root: Path  # the --data-root folder

    def root(self, name: str) -> Path:
        return self.data_root / name

    def args(self, *names: str) -> list[str]:
        return ["--datasets", ",".join(names), "--catalog", str(self.catalog), "--data-root", str(self.data_root)]


def noise_image(seed: int) -> Image.Image:
    """Random pixels, so that most of a JPEG file is entropy-coded data."""
    return Image.frombytes("RGB", (SIZE, SIZE), random.Random(seed).randbytes(SIZE * SIZE * 3))


def add_dataset(data: UserData, name: str, images: int = 4, catalog_extra: str = "") -> Path:
    """A valid 16x16-image COCO dataset with train, val and test splits, declared in the catalog; its root."""
    for split in ("train", "val", "test"):
        folder = data.root(name) / split
        folder.mkdir(parents=True)
        coco = {"images": [], "annotations": [],
                "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]}
        for i in range(1, images + 1):
            noise_image(i).save(folder / f"{i:03d}.jpg")
            coco["images"].append({"id": i, "file_name": f"{i:03d}.jpg", "width": SIZE, "height": SIZE})
            coco["annotations"].append({"id": i, "image_id": i, "category_id": 1 + i % 2, "bbox": [2, 2, 8, 8], "area": 64,
                                        "iscrowd": 0})
        (data.root(name) / f"{split}.json").write_text(json.dumps(coco))
    (data.catalog / f"{name}.yaml").write_text(YAML.format(name=name, extra=catalog_extra))
    return data.root(name)


@pytest.fixture
def user_data(tmp_path) -> UserData:
    data = UserData(tmp_path / "catalog", tmp_path / "data")
    data.catalog.mkdir()
    data.data_root.mkdir()
    return data


def edit_train(root: Path, edit) -> Path:
    path = root / "train.json"
    coco = json.loads(path.read_text())
    edit(coco)
    path.write_text(json.dumps(coco))
    return path


# Each breaks the training split of a valid dataset (its root given) and returns what the error must name.
def truncated_annotations(root: Path) -> list[str]:
    path = root / "train.json"
    path.write_bytes(path.read_bytes()[:-20])
    return [str(path), "not valid JSON"]


def image_is_a_folder(root: Path) -> list[str]:
    (root / "train" / "002.jpg").unlink()
    (root / "train" / "002.jpg").mkdir()
    return ["002.jpg (id 2)", "not regular files", str(root / "train.json")]


def missing_image(root: Path) -> list[str]:
    (root / "train" / "003.jpg").unlink()
    return ["003.jpg (id 3)", "missing", str(root / "train.json")]


def truncated_jpeg(root: Path) -> list[str]:
    path = root / "train" / "001.jpg"
    path.write_bytes(path.read_bytes()[:-40])  # its header intact: only the end marker is gone
    return ["001.jpg (id 1)", "cut off", "obtain the cut-off images again"]


def box_outside(root: Path) -> list[str]:
    path = edit_train(root, lambda coco: coco["annotations"][0].update(bbox=[40, 40, 4, 4]))
    return ["[40, 40, 4, 4] on 001.jpg", str(path), "invalid_boxes: drop"]


def negative_width_box(root: Path) -> list[str]:
    path = edit_train(root, lambda coco: coco["annotations"][2].update(bbox=[2, 2, -3, 4]))
    return ["annotation id 3", "empty, malformed or non-finite", str(path), "invalid_boxes: drop"]


def latin1_class_name(root: Path) -> list[str]:
    path = root / "train.json"
    path.write_bytes(path.read_bytes().replace(b'"name": "circle"', '"name": "cercle à pois é"'.encode("latin-1")))
    return [str(path), "not UTF-8 text"]


@pytest.mark.parametrize(
    "breaks",
    [truncated_annotations, image_is_a_folder, missing_image, truncated_jpeg, box_outside, negative_width_box,
     latin1_class_name],
    ids=lambda f: f.__name__.replace("_", "-"),
)
def test_broken_data_is_refused_before_any_cell(capsys, store, results, user_data, breaks):
    root = add_dataset(user_data, "mine")
    names = breaks(root)
    refused(capsys, sweep_args(results, store.cache, *user_data.args("mine")), results, "'mine'", *names)


@pytest.mark.parametrize("level", ["--check-data", "--check-data=full"])
def test_check_data_names_every_broken_dataset(capsys, store, results, user_data, level):
    """It used to end with "All datasets are present and valid" whatever it found."""
    missing_image(add_dataset(user_data, "holes"))
    truncated_jpeg(add_dataset(user_data, "cut"))
    argv = [level, *user_data.args("holes", "cut"), "--cache-dir", str(store.cache), "--no-progress"]
    err = refused(capsys, argv, results, absent=("passed",), paragraphs=2)
    holes, cut = err.removeprefix("error: ").strip().split("\n\n")
    assert holes.startswith("Dataset 'holes' failed") and "003.jpg (id 3)" in holes
    assert cut.startswith("Dataset 'cut' failed") and "001.jpg (id 1)" in cut


def test_an_unknown_evaluator_is_refused_before_any_cell(capsys, store, results, user_data):
    add_dataset(user_data, "mine", catalog_extra="    evaluator: bogus\n")
    refused(capsys, sweep_args(results, store.cache, *user_data.args("mine")), results, "'bogus'", "evaluator", "coco")


@pytest.mark.parametrize(
    "content, says",
    [
        (b"datasets:\n  mine: [root: mine\n", "is not valid YAML"),
        ("datasets:\n  mine:\n    description: caf\u00e9\n    root: mine\n".encode("latin-1"), "cannot be read as UTF-8 text"),
    ],
    ids=["yaml-syntax-error", "not-utf-8"],
)
def test_a_catalog_file_that_does_not_read_is_named(capsys, store, results, user_data, content, says):
    path = user_data.catalog / "mine.yaml"
    path.write_bytes(content)
    refused(capsys, sweep_args(results, store.cache, *user_data.args("mine")), results, str(path), says)


def test_a_catalog_dataset_cannot_replace_a_built_in_one(capsys, store, results, user_data):
    add_dataset(user_data, DATASET)
    refused(capsys, sweep_args(results, store.cache, *user_data.args(DATASET)), results,
            f"'{DATASET}'", "declared twice", str(user_data.catalog / f"{DATASET}.yaml"), "rename")


def test_a_missing_catalog_folder_is_named(capsys, store, results, tmp_path):
    folder = tmp_path / "no-such-catalog"
    refused(capsys, sweep_args(results, store.cache, "--catalog", str(folder)), results, str(folder), "--catalog")


# --------------------------------------------------------------------------------------------------
# Every option a message tells users to pass exists

# Options of other programs that messages quote: git (run provenance) and huggingface-cli (downloads).
FOREIGN_OPTIONS = {"--porcelain", "--untracked-files", "--local-dir", "--gpus-per-node", "--include", "--revision"}
OPTION = re.compile(r"--[a-z][a-z0-9-]+")


def declared_options(tree: ast.AST) -> set[str]:
    """The ``--options`` a module declares itself with ``add_argument("--name", ...)`` (its own
    ``python -m`` command line)."""
    return {arg.value for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"
            for arg in node.args if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("--")}


def test_every_option_a_message_names_exists():
    from bench.pretrain.__main__ import build_parser as build_pretrain_parser

    known = {option for parser in (build_parser(), build_report_parser(), build_eval_parser(), build_pretrain_parser())
             for option in parser._option_string_actions}
    unknown = []
    for path in sorted((REPO / "bench").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        allowed = known | FOREIGN_OPTIONS | declared_options(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                unknown += [f"{path.relative_to(REPO)}:{node.lineno}: {option}"
                            for option in OPTION.findall(node.value) if option not in allowed]
    assert not unknown, "options named in messages that no command line accepts:\n" + "\n".join(unknown)

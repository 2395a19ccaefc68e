"""``python -m bench.profile``: per-method step time and peak memory of a detector, as a table.

    python -m bench.profile --model glip-t --weights glip_tiny_model_o365_goldg.pth --tokenizer DIR \\
        --size 800x1333 --amp bf16 --device cuda --methods all

Each method runs in its own fresh process (:mod:`bench.profile.step`); the table gives median
seconds per step and peak memory, each also as a ratio to ``full`` when it was measured, plus the
two reference rows ``frozen`` (back-propagation through the frozen detector) and ``zero-shot``
(no-grad forward). Inputs are checked first, as a sweep checks them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Sequence

from tabulate import tabulate

from bench.devices import check_device
from bench.errors import BenchError
from bench.models import MODELS, ModelInputs, check_model_inputs
from bench.models.base import ATTENTION_KERNELS, CHECKPOINTING_LEVELS
from bench.profile.step import FROZEN, StepRequest
from bench.train.protocol import PROTOCOLS
from bench.tuning.base import METHODS

REFERENCE_ROWS = (FROZEN, "zero-shot")


def _size(value: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, e.g. 800x1333, got {value!r}") from None
    if min(height, width) < 32:
        raise argparse.ArgumentTypeError(f"the image must be at least 32x32 pixels, got {value!r}")
    return height, width


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="glip-nano", help="detector (default: glip-nano)")
    parser.add_argument("--weights", help="its checkpoint file or from_pretrained folder (else --random-init)")
    parser.add_argument("--random-init", action="store_true", help="time a randomly initialised model (GLIP only)")
    parser.add_argument("--tokenizer", metavar="DIR", help="GLIP's bert-base-uncased tokenizer folder")
    parser.add_argument("--methods", default="all", help="comma-separated methods, or 'all' (default), plus the rows frozen and zero-shot")
    parser.add_argument("--size", type=_size, default=(800, 1333), metavar="HxW", help="image size (default: 800x1333)")
    parser.add_argument("--batch", type=_positive, default=1, help="images per step (default: 1)")
    parser.add_argument("--classes", type=_positive, default=5, help="class names in the caption (default: 5, ODinW-sized)")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help="autocast precision (default: none)")
    parser.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default)")
    parser.add_argument("--steps", type=_positive, default=3, help="timed steps per method, after one warm-up (default: 3)")
    parser.add_argument("--protocol", default="glip-odinw", help="whose frozen-module rule applies (default: glip-odinw)")
    parser.add_argument("--checkpointing", choices=CHECKPOINTING_LEVELS,
                        help="activation checkpointing (default: the protocol's activation_checkpointing)")
    parser.add_argument("--attention", choices=("default", *ATTENTION_KERNELS),
                        help="attention kernel (default: the protocol's attention)")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    return parser


def requests(args: argparse.Namespace) -> list[StepRequest]:
    """One request per row, after checking every input once (as a sweep does before its first cell)."""
    MODELS.get(args.model)
    PROTOCOLS.get(args.protocol)
    check_device(args.device)
    names = [entry.name for entry in METHODS] if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    for name in names:
        if name not in REFERENCE_ROWS:
            METHODS.get(name)
    if args.weights is None and not args.random_init:
        from bench.models import PACKAGED_WEIGHTS

        if args.model not in PACKAGED_WEIGHTS:
            raise BenchError(f"--model {args.model} needs --weights, or --random-init to time a randomly initialised one.")
    weights = args.weights if args.weights or args.random_init else str(_packaged(args.model))
    check_model_inputs(args.model, ModelInputs(weights, args.tokenizer))
    base = StepRequest(model=args.model, method="", height=args.size[0], width=args.size[1], amp=args.amp, device=args.device,
                       batch=args.batch, classes=args.classes, steps=args.steps, weights=weights, tokenizer=args.tokenizer,
                       protocol=args.protocol, checkpointing=args.checkpointing, attention=args.attention)
    return [replace(base, method=name) for name in [*dict.fromkeys([*names, *REFERENCE_ROWS])]]


def _packaged(model: str) -> Path:
    from bench.models import PACKAGED_WEIGHTS

    return PACKAGED_WEIGHTS[model]


def run_in_fresh_process(request: StepRequest) -> dict:
    """The step's measurement from a new Python process (nothing left over from another method)."""
    command = [sys.executable, "-m", "bench.profile.step", json.dumps(asdict(request))]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {**asdict(request), "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: Sequence[dict]) -> str:
    full = next((r for r in rows if r["method"] == "full" and "error" not in r), None)

    def ratio(row: dict, key: str) -> str:
        return f"{row[key] / full[key]:.3f}" if full and full[key] else "-"

    shown = [[r["method"], r.get("trainable", "-"), f"{r['seconds']:.3f}", ratio(r, "seconds"), f"{r['peak_memory_gib']:.2f}",
              ratio(r, "peak_memory_gib")] if "error" not in r else [r["method"], "-", "failed", "-", "-", r["error"][:80]]
             for r in sorted(rows, key=lambda r: -r.get("seconds", 0.0))]
    return tabulate(shown, headers=["method", "trainable", "s/step", "x full", "peak GiB", "x full"], tablefmt="github")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        todo = requests(args)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows = []
    for number, request in enumerate(todo, start=1):
        print(f"[{number}/{len(todo)}] {request.method} ...", file=sys.stderr, flush=True)
        rows.append(run_in_fresh_process(request))
    first = next((r for r in rows if "error" not in r), rows[0])
    checkpointing = args.checkpointing or PROTOCOLS.get(args.protocol).activation_checkpointing
    print(f"{args.model} at {args.size[0]}x{args.size[1]}, batch {args.batch}, {args.classes}-class caption, amp {args.amp}, "
          f"activation checkpointing {checkpointing}, attention {args.attention or PROTOCOLS.get(args.protocol).attention}, "
          f"{first.get('device_name', args.device)}; median of {args.steps} steps after a warm-up; peak memory: "
          f"{first.get('peak_memory_kind', '?')}")
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

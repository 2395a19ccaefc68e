"""Peak-memory probe for the detector benchmarks, run in a fresh process so earlier work does not count.

    python tests/benchmarks/glip_probe.py MODEL forward|train SIZE

Prints one JSON line: the seconds of one step and the peak resident memory it added over the built
model (CPU has no allocator statistics like CUDA's). There is no warm-up step: freed memory stays in
the process, so a second step would hide the activations and gradients it reuses.

The helpers here (``build``, ``measure``, ``run_probe``) are shared with ``method_probe.py``.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.data.prompts import PromptClass, build_prompt  # noqa: E402
from bench.models import MODELS  # noqa: E402
from bench.models.grounding_dino.config import grounding_dino_config  # noqa: E402
from bench.models.grounding_dino.model import grounding_dino_on_config  # noqa: E402
from tests.grounding_dino_support import tiny_tokenizer  # noqa: E402

TOKENIZER = REPO / "tests" / "fixtures" / "glip_parity_A" / "bert_local"


def _random_model(model_name: str):
    """GLIP from its factory with the fixture's small vocabulary; Grounding DINO from its architecture,
    with a vocabulary that has bert-base-uncased's special-token ids (which Grounding DINO hard-codes)."""
    if model_name.startswith("grounding-dino-"):
        tokenizer = tiny_tokenizer(Path(tempfile.mkdtemp()))
        return grounding_dino_on_config(grounding_dino_config(model_name.rsplit("-", 1)[1]), tokenizer)
    return MODELS.get(model_name)(tokenizer=TOKENIZER)


def build(model_name: str, size: int):
    """A randomly initialised model, one prompt, one padded image and its targets.

    The two boxes are drawn for a 256x256 image and scaled with ``size``, so they stay inside it.
    """
    torch.manual_seed(0)
    model = _random_model(model_name)
    classes = [PromptClass(1, "red square"), PromptClass(2, "blue circle"), PromptClass(3, "green triangle")]
    prompt = build_prompt(classes, model.tokenizer, style=model.prompt_style, max_query_len=model.text_slots)
    images = torch.randn(1, 3, size, size)
    sizes = torch.tensor([[size, size]])
    boxes = torch.tensor([[10.0, 20.0, 90.0, 120.0], [100.0, 40.0, 200.0, 180.0]]) * (size / 256)
    targets = [{"boxes": boxes, "labels": torch.tensor([1, 3])}]
    return model, prompt, images, sizes, targets


def step(model, prompt, images, sizes, targets, mode: str) -> None:
    if mode == "forward":
        model.eval()
        with torch.no_grad():
            model(images, sizes, prompt)
    else:
        model.train()
        model.zero_grad(set_to_none=True)
        losses = model(images, sizes, prompt, targets)
        sum(losses.values()).backward()


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


class PeakRss:
    """The largest resident set seen while the block runs, sampled every millisecond from a thread.

    Sampling instead of the kernel's high-water mark (``ru_maxrss``): resetting that mark through
    ``/proc/self/clear_refs`` did not take in every environment, and a mark left from building the
    model then hid the step's own peak.
    """

    def __init__(self, interval_s: float = 1e-3) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval_s)

    def __enter__(self) -> "PeakRss":
        self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def measure(run: Callable[[], object]) -> dict:
    """Seconds of ``run()`` and the peak resident memory it added over what was resident before it."""
    before = rss_bytes()
    with PeakRss() as peak:
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_added_mib": max(peak.peak - before, 0) / 2**20, "rss_before_mib": before / 2**20}


def run_probe(script: Path, *args: object, timeout: float = 1800) -> dict:
    """Run a probe script in a fresh Python process; returns the JSON object it printed last."""
    command = [sys.executable, str(script), *map(str, args)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(command[1:])} exited with {out.returncode}; its stderr ends with:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    model_name, mode, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    parts = build(model_name, size)
    print(json.dumps(measure(lambda: step(*parts, mode))))


if __name__ == "__main__":
    main()

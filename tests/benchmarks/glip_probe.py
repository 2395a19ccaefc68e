"""Peak-memory probe for the GLIP benchmarks, run in a fresh process so earlier work does not count.

    python tests/benchmarks/glip_probe.py MODEL forward|train SIZE

Prints one JSON line: the seconds of one step and the peak resident memory it added over the built
model (CPU has no allocator statistics like CUDA's). There is no warm-up step: freed memory stays in
the process, so a second step would hide the activations and gradients it reuses.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.data.prompts import PromptClass, build_prompt  # noqa: E402
from bench.models import MODELS  # noqa: E402

TOKENIZER = REPO / "tests" / "fixtures" / "glip_parity_A" / "bert_local"


def build(model_name: str, size: int):
    """A randomly initialised model, one prompt, one padded image and its targets."""
    torch.manual_seed(0)
    model = MODELS.get(model_name)(tokenizer=TOKENIZER)
    prompt = build_prompt([PromptClass(1, "red square"), PromptClass(2, "blue circle"), PromptClass(3, "green triangle")], model.tokenizer)
    images = torch.randn(1, 3, size, size)
    sizes = torch.tensor([[size, size]])
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 90.0, 120.0], [100.0, 40.0, 200.0, 180.0]]), "labels": torch.tensor([1, 3])}]
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


def main() -> None:
    model_name, mode, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    parts = build(model_name, size)
    before = rss_bytes()
    start = time.perf_counter()
    step(*parts, mode)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "peak_added_mib": max(peak - before, 0) / 2**20, "rss_before_mib": before / 2**20}))


if __name__ == "__main__":
    main()

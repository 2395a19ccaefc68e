"""GLIP-T training steps with the text padded to all 256 slots (``pad_text_to_slots``, the official
setting) or only as long as the batch's caption (the default).

CPU, random weights, one 128x128 image, two captions: 5 classes (13 tokens, an ODinW-sized vocabulary)
and 80 classes (191 tokens, about COCO's). Two methods bound the cost: ``sdpt`` (frozen trunk; the
backward still crosses the fusion tower) and ``full`` (everything trains). Each group holds the
``padded`` and ``dynamic`` rows of one (method, caption); their time ratio is the saving. Reported,
never asserted; ``extra_info`` records the text length. CPU timings move with other work on the
machine: compare rows of one quiet run. On a shared machine run it with ``OMP_NUM_THREADS=1``: with
two threads waiting for each other's descheduled core, steps here took up to 7x longer, erratically.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import methods  # noqa: F401  (registers every method)
from bench.data.prompts import PromptClass, build_prompt
from bench.tuning.base import build_method

sys.path.insert(0, str(Path(__file__).parent))
from glip_probe import build  # noqa: E402

IMAGE_SIZE = 128
# Words of the benchmark tokenizer's vocabulary (glip_probe.TOKENIZER), one token each.
OBJECTS = ("person man woman child dog cat bird car bus truck boat plane train bike bicycle motorcycle horse cow sheep "
           "chair table sofa bed tv phone cup bottle bowl apple banana pizza cake book clock vase tree flower grass "
           "road sign bench bag umbrella tie kite bat glove board ski racket fish shark penguin puffin jellyfish "
           "starfish stingray rabbit hand mushroom package pothole dock lift jet crab lobster shrimp ambulance pistol "
           "hydrant ball box cube cone disk ring star moon water").split()
COLOURS = "red blue green yellow purple orange pink white black gray brown".split()


def classes(count: int) -> list[PromptClass]:
    """``count`` class names: single words, the last three eighths with a colour in front (two tokens)."""
    names, single = OBJECTS[:count], count * 5 // 8
    coloured = [f"{COLOURS[i % len(COLOURS)]} {name}" for i, name in enumerate(names[single:])]
    return [PromptClass(i, name) for i, name in enumerate(names[:single] + coloured, start=1)]


@pytest.fixture(scope="module", params=["sdpt", "full"])
def tuned_glip_t(request):
    """GLIP-T with the method applied, one image and targets on two of the classes."""
    model, _, images, sizes, targets = build("glip-t", IMAGE_SIZE)
    build_method(request.param).apply(model)
    return request.param, model, images, sizes, targets


def training_step(model, images, sizes, prompt, targets) -> None:
    model.train()
    model.zero_grad(set_to_none=True)
    sum(model(images, sizes, prompt, targets).values()).backward()


@pytest.mark.parametrize("text", ["padded", "dynamic"])
@pytest.mark.parametrize("count", [5, 80])
def test_glip_t_step_by_text_length(benchmark, tuned_glip_t, count, text):
    method, model, images, sizes, targets = tuned_glip_t
    prompt = build_prompt(classes(count), model.tokenizer, max_query_len=model.text_slots)
    model.pad_text_to_slots = text == "padded"
    benchmark.group = f"glip-t cpu {IMAGE_SIZE}x{IMAGE_SIZE} {method}, {count} classes"
    with torch.no_grad():
        length = model.encode_text([prompt]).features.hidden.shape[1]
    benchmark.extra_info.update({"caption_tokens": prompt.num_tokens, "text_length": length})
    benchmark.pedantic(training_step, args=(model, images, sizes, prompt, targets), rounds=3, iterations=1, warmup_rounds=1)

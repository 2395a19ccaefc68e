"""Text prompts and positive maps, built exactly as GLIP builds them for detection.

A detection vocabulary becomes one caption, ``"person. bicycle. car"``: cleaned class names joined by
``". "`` with no trailing separator (GLIP's ``SEPARATION_TOKENS``; ``create_queries_and_maps`` in microsoft/GLIP
maskrcnn_benchmark/engine/inference.py). Other
detectors write captions their own way (Grounding DINO: ``"person . bicycle . car ."``), which a
:class:`PromptStyle` describes; every detector declares its style (``DetectorBase.prompt_style``). Each class
owns the character span of its name (never of a caption-prompt prefix or suffix), and the span is
mapped to token positions with the fast tokenizer's ``char_to_token``, with GLIP's fallbacks for
spans that start or end on a character no token covers. Token 0 is ``[CLS]``, so token positions
are directly the model's text slots.

Long vocabularies (LVIS) do not fit the text encoder's 256 slots; they are split into chunks of
``chunk_size`` classes, one prompt per chunk, and each prompt keeps the labels of its classes so
that detections from all chunks can be merged (GLIP's ``TEST.CHUNKED_EVALUATION``:
``create_queries_and_maps_from_dataset`` and ``inference`` in maskrcnn_benchmark/engine/inference.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Sequence

import torch

from bench.errors import BenchError

GLIP_SEPARATOR = ". "
GLIP_MAX_QUERY_LEN = 256


@dataclass(frozen=True)
class PromptStyle:
    """How class names are joined into a caption: ``separator`` between two classes and
    ``terminator`` after the last one."""

    separator: str = GLIP_SEPARATOR
    terminator: str = ""


GLIP_STYLE = PromptStyle()


@dataclass(frozen=True)
class PromptClass:
    """One class as it appears in a prompt.

    ``label`` is the contiguous label the model scores (1..N); ``name`` is the (override) class name;
    ``prefix``/``suffix`` come from an optional caption prompt ("there is a " + "package" + " on the
    porch") and are not part of the class span.
    """

    label: int
    name: str
    prefix: str = ""
    suffix: str = ""


@dataclass(frozen=True)
class Prompt:
    """A caption plus where each of its classes sits, in characters and in tokens.

    ``char_spans[label] = (start, end)`` is the half-open span of the class name in ``caption``;
    ``label_to_tokens[label]`` lists the token positions of that name (GLIP's
    ``positive_map_label_to_token``). Labels whose name could not be located in the tokens (GLIP
    skips them silently) are listed in ``unlocated`` so callers can refuse or report them.
    """

    caption: str
    labels: tuple[int, ...]
    char_spans: dict[int, tuple[int, int]]
    label_to_tokens: dict[int, list[int]]
    num_tokens: int
    unlocated: tuple[int, ...] = field(default=())

    def shifted(self, k: int) -> "Prompt":
        """The same prompt with every token position moved ``k`` slots to the right.

        For text-side extensions that insert ``k`` tokens before the caption's tokens (CoOp context
        vectors after ``[CLS]``): the positive maps must follow the tokens they name. Character spans
        and the caption are unchanged; ``num_tokens`` counts the inserted tokens.
        """
        if k == 0:
            return self
        if k < 0:
            raise ValueError(f"token positions can only move right (k >= 0), got k={k}")
        return replace(
            self,
            label_to_tokens={label: [t + k for t in tokens] for label, tokens in self.label_to_tokens.items()},
            num_tokens=self.num_tokens + k,
        )

    def token_map(self, labels: Sequence[int] | torch.Tensor, max_len: int = GLIP_MAX_QUERY_LEN) -> torch.Tensor:
        """Binary ``[len(labels), max_len]`` map of token positions for each given label.

        This is the training-time positive map of a set of ground-truth boxes: GLIP normalises it in
        the dataset and binarises it again in the collator, so the binary form is what the loss sees.
        """
        labels = [int(x) for x in labels]
        out = torch.zeros((len(labels), max_len), dtype=torch.float32)
        for row, label in enumerate(labels):
            if label not in self.label_to_tokens:
                raise KeyError(f"label {label} is not part of this prompt (labels {list(self.labels)})")
            out[row, self.label_to_tokens[label]] = 1.0
        return out


def clean_name(name: str) -> str:
    """GLIP's class-name cleaning: drop a parenthesised part, underscores to spaces, squeeze double spaces.

    LVIS ``bow_(weapon)`` becomes ``"bow "`` (the trailing space is kept, as in GLIP).
    """
    name = re.sub(r"\(.*\)", "", name)
    name = name.replace("_", " ")
    return name.replace("  ", " ")


def build_caption(classes: Sequence[PromptClass], style: PromptStyle = GLIP_STYLE) -> tuple[str, dict[int, tuple[int, int]]]:
    """Join classes into one caption; return it with each label's character span of the cleaned name."""
    caption = ""
    spans: dict[int, tuple[int, int]] = {}
    for i, cls in enumerate(classes):
        caption += cls.prefix
        start = len(caption)
        caption += clean_name(cls.name)
        spans[cls.label] = (start, len(caption))
        caption += cls.suffix
        caption += style.separator if i != len(classes) - 1 else style.terminator
    return caption, spans


def _char_to_token(encoding, char_index: int) -> int | None:
    if char_index < 0:
        return None
    try:
        return encoding.char_to_token(char_index)
    except (IndexError, ValueError):  # beyond the text: GLIP treats it as "not found"
        return None


def locate_span(encoding, start: int, end: int) -> list[int] | None:
    """Token positions covering the characters ``[start, end)``, with GLIP's fallbacks.

    If no token starts at ``start`` GLIP tries ``start+1`` then ``start+2``; if no token covers
    ``end-1`` it tries ``end-2`` then ``end-3`` (a cleaned LVIS name can end in a space). ``None`` when
    either end stays unlocated.
    """
    first = _char_to_token(encoding, start)
    for candidate in (start + 1, start + 2):
        if first is not None:
            break
        first = _char_to_token(encoding, candidate)
    last = _char_to_token(encoding, end - 1)
    for candidate in (end - 2, end - 3):
        if last is not None:
            break
        last = _char_to_token(encoding, candidate)
    if first is None or last is None:
        return None
    return list(range(first, last + 1))


def build_prompt(
    classes: Sequence[PromptClass],
    tokenizer,
    *,
    style: PromptStyle = GLIP_STYLE,
    max_query_len: int = GLIP_MAX_QUERY_LEN,
) -> Prompt:
    """Build one prompt for ``classes`` with a fast (Rust-backed) Hugging Face tokenizer.

    Raises :class:`BenchError` when the caption needs more than ``max_query_len`` tokens, because the
    model would silently truncate it while the positive map would not: use :func:`build_prompts`
    with a ``chunk_size``.
    """
    if not classes:
        raise BenchError("Cannot build a prompt without classes: the dataset declares no categories.")
    if not getattr(tokenizer, "is_fast", False):
        raise BenchError(
            f"GLIP prompts need a fast tokenizer (char_to_token), but {type(tokenizer).__name__} is not one. "
            "Load it with transformers.AutoTokenizer.from_pretrained(..., use_fast=True)."
        )
    caption, spans = build_caption(classes, style)
    encoding = tokenizer(caption)
    num_tokens = len(encoding["input_ids"])
    if num_tokens > max_query_len:
        raise BenchError(
            f"The prompt for {len(classes)} classes needs {num_tokens} tokens, more than the text encoder's "
            f"{max_query_len}; the classes after the cut-off could never be detected. Split the vocabulary "
            f"into chunks (chunk_size in the dataset's catalog entry, e.g. 40 as GLIP does for LVIS)."
        )
    label_to_tokens: dict[int, list[int]] = {}
    unlocated: list[int] = []
    for cls in classes:
        tokens = locate_span(encoding, *spans[cls.label])
        if tokens is None:
            unlocated.append(cls.label)
        else:
            label_to_tokens[cls.label] = tokens
    return Prompt(
        caption=caption,
        labels=tuple(cls.label for cls in classes),
        char_spans=spans,
        label_to_tokens=label_to_tokens,
        num_tokens=num_tokens,
        unlocated=tuple(unlocated),
    )


def build_prompts(
    classes: Sequence[PromptClass],
    tokenizer,
    *,
    chunk_size: int | None = None,
    style: PromptStyle = GLIP_STYLE,
    max_query_len: int = GLIP_MAX_QUERY_LEN,
) -> list[Prompt]:
    """One prompt for the whole vocabulary, or one per consecutive chunk of ``chunk_size`` classes.

    Classes are sorted by label first (GLIP sorts categories by id), so chunk membership is stable.
    """
    ordered = sorted(classes, key=lambda c: c.label)
    if chunk_size is None:
        groups = [ordered]
    elif chunk_size < 1:
        raise BenchError(f"chunk_size must be a positive number of classes, got {chunk_size}.")
    else:
        groups = [ordered[i : i + chunk_size] for i in range(0, len(ordered), chunk_size)]
    return [build_prompt(g, tokenizer, style=style, max_query_len=max_query_len) for g in groups]


def fitting_chunk_size(classes: Sequence[PromptClass], tokenizer, *, style: PromptStyle = GLIP_STYLE,
                       max_query_len: int = GLIP_MAX_QUERY_LEN) -> int | None:
    """None when the whole vocabulary fits one caption of ``max_query_len`` tokens; otherwise the most
    classes that any caption fits, i.e. the largest n for which the n longest names fit together
    (training samples captions of any n classes). A single name that does not fit is refused."""
    try:
        build_prompt(classes, tokenizer, style=style, max_query_len=max_query_len)
        return None
    except BenchError:
        pass
    longest_first = sorted(classes, key=lambda c: -build_prompt([c], tokenizer, style=style, max_query_len=10**6).num_tokens)
    for size in range(len(longest_first) - 1, 0, -1):
        try:
            build_prompt(longest_first[:size], tokenizer, style=style, max_query_len=max_query_len)
            return size
        except BenchError:
            continue
    raise BenchError(f"The class name {longest_first[0].name!r} alone needs more than {max_query_len} text slots; "
                     "shorten it with the dataset's category_names in its catalog entry.")


def tokenize_captions(captions: Sequence[str], tokenizer, length: int = GLIP_MAX_QUERY_LEN) -> dict[str, torch.Tensor]:
    """Batch-tokenise captions padded to ``length`` slots: ``input_ids`` and ``attention_mask`` ``[B, length]``.

    GLIP's released configurations pad to all 256 slots (official code: microsoft/GLIP
    maskrcnn_benchmark/modeling/detector/generalized_vl_rcnn.py, ``padding="max_length"`` under
    ``MODEL.LANGUAGE_BACKBONE.PAD_MAX``); a detector may pass its batch's own length instead
    (:meth:`bench.models.base.DetectorBase.text_length`).
    """
    return tokenizer(
        list(captions),
        max_length=length,
        padding="max_length",
        truncation=True,
        return_tensors="pt",
    )

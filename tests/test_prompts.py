"""Prompts and positive maps against the official GLIP code (fixture A) and GLIP's rules."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from bench.data.prompts import (
    PromptClass,
    build_caption,
    build_prompt,
    build_prompts,
    clean_name,
    fitting_chunk_size,
    tokenize_captions,
)
from bench.errors import BenchError

FIXTURE_CLASSES = [PromptClass(1, "red square"), PromptClass(2, "blue circle"), PromptClass(3, "green triangle")]


@pytest.fixture(scope="module")
def tokenizer(fixtures_dir):
    return AutoTokenizer.from_pretrained(fixtures_dir / "glip_parity_A" / "bert_local")


@pytest.fixture(scope="module")
def summary(fixture_a_summary):
    return fixture_a_summary


@pytest.fixture(scope="module")
def reference(fixture_a_reference):
    return fixture_a_reference


def test_prompt_matches_official_glip(tokenizer, summary):
    prompt = build_prompt(FIXTURE_CLASSES, tokenizer)
    assert prompt.caption == summary["query"]
    assert tokenizer(prompt.caption)["input_ids"] == summary["query_input_ids"]
    expected = {int(k): v for k, v in summary["positive_map_label_to_token"].items()}
    assert prompt.label_to_tokens == expected
    assert prompt.unlocated == ()


def test_char_spans_match_official_training_spans(tokenizer, summary):
    prompt = build_prompt(FIXTURE_CLASSES, tokenizer)
    official = [tuple(spans[0]) for spans in summary["tokens_positive_train"][0]]
    assert [prompt.char_spans[label] for label in (1, 2, 3)] == official


def test_training_positive_map_matches_official(tokenizer, reference):
    prompt = build_prompt(FIXTURE_CLASSES, tokenizer)
    labels = reference["train.target0.labels"]
    assert torch.equal(prompt.token_map(labels), reference["train.positive_map"])


def test_padded_tokenization_matches_official(tokenizer, summary, reference):
    batch = tokenize_captions([summary["query"]], tokenizer)
    assert torch.equal(batch["input_ids"], reference["eval.lang_input_ids"])
    assert torch.equal(batch["attention_mask"], reference["eval.lang_attention_mask"])


@pytest.mark.parametrize(
    "raw, cleaned",
    [("bow_(weapon)", "bow "), ("traffic_light", "traffic light"), ("Cottontail-Rabbit", "Cottontail-Rabbit"), ("a  b", "a b")],
)
def test_clean_name_follows_glip(raw, cleaned):
    assert clean_name(raw) == cleaned


def test_caption_prompt_span_covers_only_the_name():
    caption, spans = build_caption([PromptClass(1, "package", prefix="there is a ", suffix=" on the porch"), PromptClass(2, "dog")])
    assert caption == "there is a package on the porch. dog"
    assert caption[slice(*spans[1])] == "package"
    assert caption[slice(*spans[2])] == "dog"


def test_name_ending_in_space_falls_back_to_previous_character(tokenizer):
    # An LVIS-style name like "red_(x)" cleans to "red ", whose last character is a space that no
    # token covers; GLIP then tries end-2, so the class still maps to the token of "red".
    prompt = build_prompt([PromptClass(1, "red_(x)"), PromptClass(2, "blue")], tokenizer)
    assert prompt.caption == "red . blue"
    assert prompt.label_to_tokens[1] == [1]
    assert prompt.label_to_tokens[2] == [3]


def test_chunks_keep_labels_and_cover_every_class(tokenizer):
    classes = [PromptClass(label, name) for label, name in enumerate(["red", "blue", "green", "square", "circle"], start=1)]
    prompts = build_prompts(list(reversed(classes)), tokenizer, chunk_size=2)
    assert [p.labels for p in prompts] == [(1, 2), (3, 4), (5,)]
    assert prompts[1].caption == "green. square"
    assert prompts[1].label_to_tokens == {3: [1], 4: [3]}


def test_prompt_longer_than_text_slots_is_refused(tokenizer):
    classes = [PromptClass(i, "red square") for i in range(1, 40)]
    with pytest.raises(BenchError, match="chunk"):
        build_prompt(classes, tokenizer, max_query_len=32)
    assert all(p.num_tokens <= 32 for p in build_prompts(classes, tokenizer, chunk_size=5, max_query_len=32))


def test_token_map_rejects_label_outside_prompt(tokenizer):
    prompt = build_prompt(FIXTURE_CLASSES, tokenizer)
    with pytest.raises(KeyError, match="label 9"):
        prompt.token_map([9])


def test_a_vocabulary_too_long_for_one_caption_gets_the_largest_chunk_any_of_its_classes_fit(tokenizer):
    classes = [PromptClass(label, name) for label, name in enumerate(["cat", "dog", "hippopotamus", "bird", "cow"], start=1)]
    whole = build_prompt(classes, tokenizer).num_tokens
    assert fitting_chunk_size(classes, tokenizer, max_query_len=whole) is None
    size = fitting_chunk_size(classes, tokenizer, max_query_len=whole - 1)
    assert size == 4
    longest = sorted(classes, key=lambda c: -build_prompt([c], tokenizer).num_tokens)[:size]
    assert build_prompt(longest, tokenizer, max_query_len=whole - 1).num_tokens <= whole - 1
    with pytest.raises(BenchError, match="'hippopotamus' alone needs more than 3 text slots"):
        fitting_chunk_size(classes, tokenizer, max_query_len=3)

"""Every method's effective count against the rank of a Jacobian, on the tiny detectors (the rule:
:mod:`bench.tuning.accounting`).

A full-model Jacobian is too dear here (one backward pass of the tiny GLIP takes seconds on two
cores), so each test differentiates the modules that first read the method's tensors: the fusion
layers for SDPT and the peft adapters, the prompted Swin blocks for VPT and MaPLe's vision side, the
text path up to what fusion reads for CoOp, MaPLe and glip-prompt. They run in float64 on the inputs
they received in one forward pass of the task, or on random inputs where the task's single caption
would hide directions that other data shows (the peft tests). The rest of the detector sees the
method only through these modules' outputs, so their rank bounds the model's from above; the one
claim about the rest (padded text slots act on nothing) gets an end-to-end gradient check.

Ranks are numerical, of ``R J`` with ``R`` random projections of the outputs, ``count + MARGIN`` of
them: ``rank(R J) = rank(J)`` whenever ``rank(J) < count + MARGIN``, so a rank above the count shows
too. The tensors are first moved to a generic point (zero-initialised LoRA ``B``, small prompts whose
LayerNorm ``eps`` would blur the scale direction). Each count was also run against the counts before
this rule (the allocation, or ``slots x width`` for glip-prompt) and fails them.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import pytest
import torch
from torch import nn

import methods  # noqa: F401  (registers every method)
from bench.data.prompts import tokenize_captions
from bench.tuning.accounting import LAYER_NORM_INVARIANCES, account
from bench.tuning.accounting_table import accounting_table
from bench.tuning.base import Method, build_method
from methods.peft_tuners import low_rank_dimension

MARGIN = 16
# Neighbouring singular values this far apart separate acting directions from dead ones (float32
# rounding in SDPT's pseudo-inverses, LayerNorm's eps, float64 noise all sit below it).
GAP = 1e3

Captured = tuple[tuple[Any, ...], dict[str, Any]]


# ----------------------------------------------------------------------------- rank machinery
def numerical_rank(matrix: torch.Tensor) -> int:
    """Singular values above the first drop by more than :data:`GAP` between neighbours, or all of them."""
    values = torch.linalg.svdvals(matrix.double())
    drops = values[:-1] / values[1:].clamp_min(torch.finfo(torch.float64).tiny)
    first = (drops > GAP).nonzero()
    return int(first[0]) + 1 if len(first) else len(values)


def jacobian_rank(outputs: Callable[[], torch.Tensor], tensors: Sequence[torch.Tensor], count: int,
                  columns: Callable[[list[torch.Tensor]], torch.Tensor] | None = None) -> int:
    """``rank(R J)``, ``J`` the Jacobian of ``outputs()`` (flattened) with respect to ``tensors``.

    ``columns`` picks the Jacobian's columns from the per-tensor gradients (default: all, flattened).
    """
    y = outputs().flatten()
    projections = torch.randn(count + MARGIN, y.numel(), dtype=y.dtype, generator=torch.Generator().manual_seed(0))
    rows = []
    for chunk in projections.split(128):
        grads = torch.autograd.grad(y, list(tensors), grad_outputs=chunk, is_grads_batched=True, retain_graph=True)
        rows.append(columns(list(grads)) if columns else torch.cat([g.flatten(1) for g in grads], dim=1))
    return numerical_rank(torch.cat(rows))


def generic_point(trainable: dict[str, nn.Parameter], scale: float) -> None:
    """Move every trained tensor to a random point (``N(0, scale^2)`` added)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in trainable.values():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))


def capture(module: nn.Module, run: Callable[[], Any]) -> Captured:
    """The arguments ``module`` is called with during ``run()`` (its last call), detached."""
    seen: dict[str, Captured] = {}

    def hook(_module, args, kwargs):
        detach = lambda x: x.detach() if torch.is_tensor(x) else x  # noqa: E731
        seen["call"] = (tuple(detach(a) for a in args), {k: detach(v) for k, v in kwargs.items()})

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    with torch.no_grad():
        run()
    handle.remove()
    return seen["call"]


def in_double(call: Captured) -> Captured:
    cast = lambda x: x.double() if torch.is_tensor(x) and x.is_floating_point() else x  # noqa: E731
    args, kwargs = call
    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


def trimmed_glip_fusion_call(call: Captured, image_rows: int = 96) -> Captured:
    """A GLIP fusion layer's inputs cut to some image rows and to the real text tokens plus two padded
    ones (GLIP pads the text to 256 slots; padded tokens only update themselves, so the real rows'
    outputs are those of the whole call)."""
    (v, l, mask), kwargs = call
    keep = int(mask[0].sum()) + 2
    return (v[:, :image_rows], l[:, :keep], mask[:, :keep]), kwargs


def run_task(model, backend) -> None:
    """One forward pass of the backend's task (images and prompt) through ``model``, in its dtype
    (GLIP's token head runs in float32 only, so GLIP runs before ``model.double()``)."""
    task = backend.task
    images = task.images.to(next(model.parameters()).dtype)
    if backend.name == "glip":
        model.predict(model.backbone(images), model.encode_text([task.prompt]).features)
    else:
        model.predict(images, task.sizes, [task.prompt])


def applied(backend, name: str, options: dict | None = None) -> tuple[nn.Module, Method, dict[str, nn.Parameter]]:
    model = backend.build()
    method = build_method(name, options)
    return model, method, method.apply(model)


# ----------------------------------------------------------------------------- what the modules see
def fusion_outputs(layer: nn.Module, call: Captured, parts: tuple[str, ...] = ("image", "text")) -> torch.Tensor:
    """A fusion layer's image and text updates (``parts``), the text ones at real tokens only (padding
    is masked)."""
    args, kwargs = call
    out = layer(*args, **kwargs)
    if isinstance(out[0], tuple):  # Grounding DINO: ((Δv, weights), (Δt, weights)), mask True at padding
        (delta_v, _), (delta_l, _) = out
        padding = kwargs.get("text_attention_mask", args[3] if len(args) > 3 else None)
        real = torch.ones(delta_l.shape[1], dtype=torch.bool) if padding is None else ~padding[0].bool()
    else:  # GLIP: (Δv, Δl), mask 1 at real tokens
        delta_v, delta_l = out
        real = args[2][0].bool()
    updates = {"image": delta_v.flatten(), "text": delta_l[:, real].flatten()}
    return torch.cat([updates[part] for part in parts])


def text_path(model, backend) -> Callable[[], torch.Tensor]:
    """The text features at the used positions as fusion first reads them: GLIP's first fusion
    LayerNorm of BERT's output (plus the offset slot); Grounding DINO's projection of BERT's output
    (plus the offset, which a hook on BERT adds). Call after ``model.double()``."""
    prompt = backend.task.prompt
    if backend.name == "glip":
        tokens = tokenize_captions([prompt.caption], model.tokenizer, model.text_slots)
        norm = model.rpn.head.dyhead_tower[0].b_attn.layer_norm_l

        def glip_text() -> torch.Tensor:
            encoding = model.language_backbone(tokens["input_ids"], tokens["attention_mask"])
            hidden = encoding.hidden if model.text_feature_offset is None else model.text_feature_offset(encoding.hidden)
            return norm(hidden)[0, encoding.mask[0].bool()]

        return glip_text
    bert = model.hf.model.text_backbone
    call = capture(bert, lambda: run_task(model, backend))
    shift = model.text_encoder().token_shift()
    tokens = model.tokenizer([prompt.caption], padding="longest", return_tensors="pt")
    ids = nn.functional.pad(tokens["input_ids"], (0, shift), value=model.tokenizer.pad_token_id)
    mask = nn.functional.pad(tokens["attention_mask"], (0, shift))
    used = torch.cat([mask[:, :1], mask.new_ones(1, shift), mask[:, 1 : mask.shape[1] - shift]], dim=1)[0].bool()
    language = model.text_encoder()

    def grounding_dino_text() -> torch.Tensor:
        args, kwargs = call
        if language.input_embedding_hook is None:
            out = bert(*args, **kwargs)
        else:
            embeddings, _ = language.hooked_embeddings(ids, mask)
            with language.substituted_word_embeddings(embeddings):
                out = bert(*args, **kwargs)
        return model.hf.model.text_projection(out.last_hidden_state)[0, used]

    return grounding_dino_text


def block_outputs(model, backend, blocks: list[nn.Module]) -> Callable[[], torch.Tensor]:
    """The outputs of ``blocks`` (Swin blocks) on the inputs the task gave them, in float64."""
    calls = [capture(block, lambda: run_task(model, backend)) for block in blocks]
    model.double()

    def outputs() -> torch.Tensor:
        results = []
        for block, call in zip(blocks, calls):
            args, kwargs = in_double(call)
            out = block(*args, **kwargs)
            results.append((out[0] if isinstance(out, tuple) else out).flatten())
        return torch.cat(results)

    return outputs


# ----------------------------------------------------------------------------- SDPT
SDPT_CASES = {
    "masked": {"num_tokens": 2, "layers": (0,)},
    "visible": {"num_tokens": 2, "layers": (0,), "text_prompt_visible": True},
    "shared": {"num_tokens": 2, "shared": True},
    "both-layers": {"num_tokens": 2},
}


@pytest.mark.parametrize("case", SDPT_CASES)
def test_sdpt_counts_the_rank_of_the_maps_its_tokens_act_through(case, backend):
    """Masked text prompts: only ``T``'s component in col(W_v) acts (tiny GLIP: ``v_dim = 64`` of
    ``E = 128``); visible: ``min(E, v_dim + l_dim)``; shared: the rank over both layers at once.

    With visible prompts the image updates see ``T`` only through ``P_l`` and the text updates only
    through ``P_v``; their joint spectrum reaches down towards the float32 rounding of the prompts
    (col(W_v) and col(W_l) meet at small angles), so each part's rank is checked on its own too."""
    model, method, trainable = applied(backend, "sdpt", SDPT_CASES[case])
    layers = [layer for layer in model.fusion_layers() if layer.token_extension is not None]
    calls = [capture(layer, lambda: run_task(model, backend)) for layer in layers]
    if backend.name == "glip":
        calls = [trimmed_glip_fusion_call(call) for call in calls]
    model.double()
    count = method.effective_trainable(model)

    def outputs() -> torch.Tensor:
        return torch.cat([fusion_outputs(layer, in_double(call)) for layer, call in zip(layers, calls)])

    assert jacobian_rank(outputs, list(trainable.values()), count) == count
    if case == "visible":
        (layer,), (call,) = layers, calls
        query, key = layer.attention_projections()
        for part, width in (("image", key.in_features), ("text", query.in_features)):
            part_count = 2 * width
            rank = jacobian_rank(lambda: fusion_outputs(layer, in_double(call), (part,)), list(trainable.values()), part_count)
            assert rank == part_count


def test_sdpt_generic_count_on_the_meta_device_matches_the_exact_rank(backend):
    """Without weights (the accounting table builds full-size models on the meta device) the count is
    the generic rank, which the tiny models' real weights attain."""
    for options in SDPT_CASES.values():
        model, method, _ = applied(backend, "sdpt", options)
        exact = method.effective_trainable(model)
        model.to("meta")
        assert method.effective_trainable(model) == exact


def test_full_size_counts_follow_the_formulas():
    """Grounding DINO-T: fusion width E = 1024 but v_dim = l_dim = 256, and BERT's 768-wide features
    reach fusion through a 768 -> 256 projection."""
    table = accounting_table(["grounding-dino-t"], ["sdpt", "glip-prompt"]).set_index("method")
    assert table.loc["sdpt", "effective"] == 6 * 100 * 256
    assert table.loc["glip-prompt", "effective"] == 256 * 256


# ----------------------------------------------------------------------------- glip-prompt
def test_glip_prompt_counts_the_rows_of_the_used_positions(backend):
    """Rank of the fusion-side text features in the offset rows. GLIP's first fusion block normalises
    the text before anything reads it, which costs each row two directions the extension points do not
    show: there the count is ``2 * positions`` above the rank (documented in methods/glip_prompt.py)."""
    model, method, trainable = applied(backend, "glip-prompt")
    positions = backend.task.prompt.num_tokens
    generic_point(trainable, 1.0)
    model.double()
    outputs = text_path(model, backend)
    (weight,) = trainable.values()
    count = method.effective_trainable(model, text_positions=positions)
    assert count == positions * weight.shape[1]  # both tiny models read the text at BERT's width
    known_gap = LAYER_NORM_INVARIANCES * positions if backend.name == "glip" else 0

    def used_rows(grads: list[torch.Tensor]) -> torch.Tensor:
        (grad,) = grads
        assert torch.count_nonzero(grad[:, positions:]) == 0
        return grad[:, :positions].flatten(1)

    assert jacobian_rank(outputs, [weight], count, used_rows) == count - known_gap


def test_padded_text_slots_act_on_nothing_in_the_whole_detector(backend):
    """End to end: the gradient of every output the detector uses (token logits at real tokens,
    boxes) reaches the offset rows of the caption's positions and no other row."""
    model, method, trainable = applied(backend, "glip-prompt")
    generic_point(trainable, 0.1)
    task = backend.task
    if backend.name == "glip":
        features = model.backbone(task.images)
        text = model.encode_text([task.prompt]).features
        out, _ = model.predict(features, text)
        real = text.mask[0].bool()
        used = [logits[..., real] for logits in out.dot_product_logits] + out.bbox_reg + out.centerness
    else:
        out = model.predict(task.images, task.sizes, [task.prompt])
        real = out["text_mask"][0].bool()
        used = [out.logits[..., : real.shape[0]][..., real], out.pred_boxes]
    (weight,) = trainable.values()
    (grad,) = torch.autograd.grad(sum((u * torch.randn_like(u)).sum() for u in used), [weight])
    rows = grad.abs().sum(dim=1) > 0
    positions = task.prompt.num_tokens
    assert rows[:positions].all() and not rows[positions:].any()


def test_text_positions_default_to_every_slot_and_pass_through_the_account(backend):
    model, method, trainable = applied(backend, "glip-prompt")
    width = model.text_encoder().word_embeddings().embedding_dim
    assert method.effective_trainable(model) == model.text_slots * width
    assert method.effective_trainable(model, text_positions=10 * model.text_slots) == model.text_slots * width
    assert account(model, method, trainable, text_positions=5).effective == 5 * width
    coop = build_method("coop")  # methods whose tensors are not indexed by text position ignore it
    assert coop.effective_trainable(model, text_positions=5) == coop.effective_trainable(model)


# ----------------------------------------------------------------------------- text context
def test_coop_loses_two_directions_per_context_vector_to_the_embedding_layer_norm(backend):
    model, method, trainable = applied(backend, "coop", {"context_tokens": 2})
    generic_point(trainable, 1.0)
    model.double()
    count = method.effective_trainable(model)
    assert count == 2 * (model.text_encoder().word_embeddings().embedding_dim - LAYER_NORM_INVARIANCES)
    assert jacobian_rank(text_path(model, backend), list(trainable.values()), count) == count


def test_maple_couplings_reach_only_the_prompts_their_blocks_normalise(backend):
    """Text: the input context (through BERT's embedding LayerNorm) and one deep prompt; vision: the two
    prompted blocks, each reading ``M x C`` coupled prompts through its LayerNorm."""
    model, method, trainable = applied(backend, "maple", {"context_tokens": 1, "prompt_depth": 2})
    generic_point(trainable, 1.0)
    blocks = [b.module for b in model.vision_blocks()[:2]]
    vision = block_outputs(model, backend, blocks)  # leaves the model in float64
    text = text_path(model, backend)
    count = method.effective_trainable(model)
    assert jacobian_rank(lambda: torch.cat([text().flatten(), vision()]), list(trainable.values()), count) == count


# ----------------------------------------------------------------------------- VPT
VPT_STAGE = {"glip": 0, "grounding-dino": 2}  # a stage with two blocks in each tiny backbone


@pytest.mark.parametrize("mode", ["deep", "shallow", "per-stage"])
def test_vpt_loses_two_directions_per_prompt_to_the_block_layer_norm(mode, backend):
    model, method, trainable = applied(backend, "vpt", {"num_tokens": 2, "mode": mode, "stages": (VPT_STAGE[backend.name],)})
    generic_point(trainable, 3.0)  # large prompts: the scale direction acts only through eps / variance
    blocks = [b.module for b in model.vision_blocks() if b.module.extra_tokens is not None]
    count = method.effective_trainable(model)
    assert count == method.expected_trainable(model) - 2 * LAYER_NORM_INVARIANCES * len(trainable)
    assert jacobian_rank(block_outputs(model, backend, blocks), list(trainable.values()), count) == count


# ----------------------------------------------------------------------------- peft
def adapter_layers(model) -> list[nn.Module]:
    """The peft-wrapped Linear layers of ``model``."""
    return [m for m in model.modules() if hasattr(m, "base_layer") and isinstance(m.get_base_layer(), nn.Linear)]


def summed_linear_ranks(model: nn.Module, count: Callable[[nn.Linear, list[nn.Parameter]], int]) -> int:
    """The sum over the peft-wrapped Linear layers of the Jacobian rank of each one's output, with
    respect to its trained tensors, on random inputs that span its input space; ``count(base,
    tensors)`` is the rank the test expects of that layer (the size of the random projection)."""
    total = 0
    for layer in adapter_layers(model):
        tensors = [p for p in layer.parameters() if p.requires_grad]
        base = layer.get_base_layer()
        inputs = torch.randn(base.in_features + 8, base.in_features, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        total += jacobian_rank(lambda: layer(inputs), tensors, count(base, tensors))
    return total


@pytest.mark.parametrize("name", ["lora", "dora"])
def test_lora_and_dora_count_the_low_rank_updates_of_each_linear(name, glip_a_factory):
    """Each wrapped Linear on random inputs that span its input space: ``(A, B) -> B A`` has rank
    ``r (in + out) - r^2``, and DoRA's magnitudes add ``out`` (the row normalisation removes nothing
    the low-rank updates reach). Whether a fusion layer sees every update: the slow test below."""
    model = glip_a_factory().double()
    method = build_method(name, {"rank": 2, "alpha": 2.0})
    generic_point(method.apply(model), 0.3)
    total = summed_linear_ranks(model, lambda base, tensors: low_rank_dimension(2, base.out_features, base.in_features)
                                + (base.out_features if name == "dora" else 0))
    assert total == method.effective_trainable(model) < method.expected_trainable(model)


@pytest.mark.parametrize(("name", "options"), [
    ("peft:vera", {}), ("peft:vera", {"r": 16}),
    ("peft:hra", {}), ("peft:hra", {"r": 6}), ("peft:hra", {"r": 4, "apply_GS": True}),
    ("peft:lokr", {}), ("peft:lokr", {"r": 2}), ("peft:lokr", {"r": 2, "decompose_both": True}),
])
def test_catalogue_tuners_with_a_derivation_lose_their_gauges(name, options, glip_a_factory):
    """As for LoRA, each wrapped Linear on inputs that span its input space: VeRA loses one scale per
    layer, HRA ``r (r + 1) / 2`` (``r^2`` with Gram-Schmidt), LoKr one scale plus each factored
    factor's ``r x r`` gauge (the derivations: :mod:`methods.peft_tuners`). Applied in float32 (as
    trained; PSOFT-like inits refuse float64), then moved to float64."""
    model = glip_a_factory()
    method = build_method(name, options)
    trainable = method.apply(model)
    model.double()
    generic_point(trainable, 0.3)
    total = summed_linear_ranks(model, lambda base, tensors: sum(p.numel() for p in tensors))
    assert total == method.effective_trainable(model) < method.expected_trainable(model)


def random_fusion_inputs(layer: nn.Module, length: int) -> Captured:
    """Generic image and text rows for a fusion layer, ``length`` of each, every text row real."""
    query, key = layer.attention_projections()
    generator = torch.Generator().manual_seed(3)
    v = torch.randn(1, length, query.in_features, dtype=torch.float64, generator=generator)
    l = torch.randn(1, length, key.in_features, dtype=torch.float64, generator=generator)
    return (v, l, torch.ones(1, length, dtype=torch.long)), {}


def layer_tensors(layer: nn.Module, trainable: dict[str, nn.Parameter]) -> list[nn.Parameter]:
    """The trained tensors inside one fusion layer (its adapters and its token extension's tokens)."""
    inside = {id(p) for p in layer.parameters()}
    return [p for p in trainable.values() if id(p) in inside]


def test_ia3_query_and_key_scales_meet_in_one_product_per_channel(glip_a_factory):
    """Per fusion layer: six scaled projections, less ``E`` because the logits see ``s_q * s_k``."""
    model = glip_a_factory().double()
    method = build_method("ia3")
    trainable = method.apply(model)
    generic_point(trainable, 0.3)
    total = 0
    for layer in model.fusion_layers():
        call = random_fusion_inputs(layer, 48)
        tensors = layer_tensors(layer, trainable)
        total += jacobian_rank(lambda: fusion_outputs(layer, call), tensors, sum(p.numel() for p in tensors))
    assert total == method.effective_trainable(model) == method.expected_trainable(model) - 2 * 128


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lora", "dora", "sdpt+lora"])
def test_a_multi_head_fusion_layer_sees_every_low_rank_update(name, glip_a_factory):
    """The first fusion layer of the tiny GLIP (four heads) on random inputs with more image and text
    rows than its width, so that every update can show: no gauge between its six projections' updates
    (one head would have one between the query and key updates), nor between them and SDPT's tokens.
    ``sdpt_text_prompt_visible`` makes the tokens act on both branches."""
    options = {"rank": 1, "alpha": 1.0} if name != "sdpt+lora" else {
        "lora_rank": 1, "lora_alpha": 1.0, "sdpt_num_tokens": 2, "sdpt_layers": (0,), "sdpt_text_prompt_visible": True}
    model = glip_a_factory().double()
    method = build_method(name, options)
    trainable = method.apply(model)
    generic_point(trainable, 0.3)
    layer = model.fusion_layers()[0]
    call = random_fusion_inputs(layer, 136)
    adapters = [m for m in adapter_layers(model) if any(m is inner for inner in layer.modules())]
    count = sum(low_rank_dimension(1, a.get_base_layer().out_features, a.get_base_layer().in_features) for a in adapters)
    if name == "dora":
        count += sum(a.get_base_layer().out_features for a in adapters)
    if name == "sdpt+lora":
        count += method.part_methods()[0].effective_trainable(model)
    assert jacobian_rank(lambda: fusion_outputs(layer, call), layer_tensors(layer, trainable), count) == count


# ----------------------------------------------------------------------------- the detector's own weights
@pytest.mark.parametrize("name", ["zero-shot", "full", "bitfit", "linear-probe"])
def test_methods_on_the_detectors_own_weights_report_their_allocation(name, backend):
    """An upper bound by declaration (their docstrings say which symmetries it leaves in)."""
    model, method, trainable = applied(backend, name)
    assert method.effective_trainable(model) == method.expected_trainable(model) == sum(p.numel() for p in trainable.values())


def test_composites_sum_their_parts(backend):
    for name in ("dual-prompt", "sdpt+lora"):
        model, method, _ = applied(backend, name)
        assert method.effective_trainable(model, 7) == sum(part.effective_trainable(model, 7) for part in method.part_methods())

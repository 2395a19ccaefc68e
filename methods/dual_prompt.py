"""Dual-modal prompts without coupling: CoOp text context plus deep VPT vision prompts.

The "dual-modal, unsynchronised" baseline of the SDPT paper's comparison: the text side is
:mod:`methods.coop` (M context vectors after ``[CLS]``, positive maps shifted), the vision side is
:mod:`methods.vpt` (P tokens per Swin block as extra keys and values); the two sets are learned
independently, unlike MaPLe, whose vision prompts are functions of its text prompts.

Built with :func:`methods.composition.register_composite`, so the config is flat: the shared ``lr``
and ``weight_decay`` default to CoOp's (1e-2, 0.01, the AdamW setting of every prompt method; see
:mod:`methods.coop`), then ``coop_*`` and ``vpt_*`` fields with each part's defaults and sources
(``coop_context_tokens = 16``, ``vpt_num_tokens = 10``, ``vpt_mode = "deep"``, ``vpt_init =
"xavier"``, ``vpt_stages = None``). Trainable parameters:
``M * D_text + P * sum(C_block)`` over the prompted blocks; effective, the parts' counts summed
(the two act in different modalities): ``M * (D_text - 2) + P * sum(C_block - 2)``.
"""

from __future__ import annotations

import methods.coop  # noqa: F401  (the parts must be registered first)
import methods.vpt  # noqa: F401
from methods.composition import register_composite

register_composite(
    "dual-prompt",
    ("coop", "vpt"),
    "independent dual prompts: CoOp text context plus deep VPT prompts in every Swin block (no coupling)",
)

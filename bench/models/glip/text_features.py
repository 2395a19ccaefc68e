"""The text side of the VL-DyHead tower: token features and their attention mask.

The official tower passes a ``lang`` dict and overwrites ``lang["hidden"]`` in place at every
module; here each tower module returns a new :class:`TextFeatures` instead, so a caller's inputs are
never modified (official: ``VLDyHead`` and ``VLFuse.forward`` in microsoft/GLIP
maskrcnn_benchmark/modeling/rpn/vldyhead.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class TextFeatures:
    """Token features entering or leaving a tower module.

    ``hidden`` ``[B, T, D_text]``: the (fused) token features; at the tower input the language
    backbone's unmasked last layer. ``mask`` ``[B, T]``: the tokenizer's attention mask (int or bool,
    1 = real token, 0 = padding); it never changes inside the tower.
    """

    hidden: torch.Tensor
    mask: torch.Tensor

    def with_hidden(self, hidden: torch.Tensor) -> TextFeatures:
        """The same tokens with new features (the mask is shared, not copied)."""
        return replace(self, hidden=hidden)

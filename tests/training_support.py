"""A few plain optimiser steps on one batch, shared by the method tests of every backend."""

from __future__ import annotations

import torch


def train_steps(model, trainable, images, sizes, prompts, targets, *, steps: int, lr: float) -> list[float]:
    """AdamW (no weight decay) on ``trainable`` for ``steps`` steps of the same batch; the losses, model left in eval mode."""
    optimizer = torch.optim.AdamW(trainable.values(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = sum(model(images, sizes, prompts, targets).values())
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses

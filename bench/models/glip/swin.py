"""Swin Transformer v1 as GLIP uses it: ``backbone.body`` (microsoft/GLIP
maskrcnn_benchmark/modeling/backbone/swint.py).

Layout and state-dict names are the official ones (the Swin-Transformer-Object-Detection variant)::

    patch_embed.{proj, norm}
    layers.{i}.blocks.{j}.{norm1, attn.{qkv, proj, relative_position_bias_table,
                           relative_position_index}, norm2, mlp.{fc1, fc2}}
    layers.{i}.downsample.{norm, reduction}      i < 3: patch merging INSIDE stage i
    norm1, norm2, norm3                          norm0 is an Identity (no parameters)

The output is the list of the four stage maps ``[B, C_i, H_i, W_i]`` (strides 4, 8, 16, 32), each
taken before that stage's patch merging and passed through its output norm.

Extension point for visual prompts (VPT): every :class:`SwinTransformerBlock` has an
``extra_tokens`` slot, ``None`` by default. A module or callable placed there is called with the
block's input ``x [B, H*W, C]`` and returns prompt tokens ``[B, P, C]``. They are normalised by the
block's ``norm1`` like the image tokens and join the attention of *every* window as ``P`` extra keys
and values, with zero relative-position bias and never hidden by the shifted-window mask. Only the
image tokens are queries, so the block's output and everything after it keep their shapes. With
the slot empty nothing extra runs and the block computes exactly the official function.
:meth:`SwinTransformer.blocks` lists the blocks with their stage and width.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.ops import StochasticDepth

from bench.models.base import VisionBlock, checked_block_prompts
from bench.models.glip.config import SwinConfig

# [Q] The shifted-window mask adds -100.0 (not -inf) between tokens from different image regions
# (official swint.py, BasicLayer.forward); exp(-100) is tiny but not zero, so the value matters for parity.
SHIFT_MASK_VALUE = -100.0


class PromptTokens(Protocol):
    """What a block's ``extra_tokens`` slot holds: ``x [B, H*W, C]`` -> prompt tokens ``[B, P, C]``."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """``[B, H, W, C]`` (H, W multiples of ``window``) -> ``[B * nW, window * window, C]``, windows
    row-major within each image, images outer."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``[B * nW, window * window, C]`` -> ``[B, H, W, C]``."""
    c = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


def shifted_window_mask(height: int, width: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """Additive attention mask ``[nW, N, N]`` (N = window²) for the cyclically shifted windows.

    ``height``/``width`` are the window-padded sizes. After the roll, a window may hold tokens from up
    to four regions that are not neighbours in the image; pairs from different regions get
    :data:`SHIFT_MASK_VALUE`, pairs from the same region 0. Like the official code the mask is built
    even when the map is smaller than a window (the regions are then partly empty).
    """
    regions = torch.zeros(1, height, width, 1, device=device)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for rows in bounds:
        for cols in bounds:
            regions[:, rows, cols, :] = label
            label += 1
    region_windows = window_partition(regions, window).squeeze(-1)  # [nW, N]
    different = region_windows.unsqueeze(1) != region_windows.unsqueeze(2)
    return torch.zeros(different.shape, device=device).masked_fill(different, SHIFT_MASK_VALUE)


def relative_position_index(window: int) -> torch.Tensor:
    """``[N, N]`` int64: for every (query, key) pair of a window, the row of the bias table holding
    their relative offset ``(dy + window - 1) * (2 * window - 1) + (dx + window - 1)``."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return relative[..., 0] * (2 * window - 1) + relative[..., 1]


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative-position bias.

    ``forward(windows [B*nW, N, C], mask [nW, N, N] | None, prompts [B, P, C] | None)`` ->
    ``[B*nW, N, C]``. ``prompts`` (already normalised) add ``P`` keys and values shared by all
    windows of an image; they get no position bias and no mask.
    """

    def __init__(self, dim: int, window: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # Persistent: the official checkpoints hold it.
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def position_bias(self) -> torch.Tensor:
        """``[heads, N, N]``: the bias table gathered for every (query, key) pair of a window."""
        n = self.window * self.window
        return self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)

    def _heads(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B', L, C]`` -> q, k, v, each ``[B', heads, L, C / heads]``."""
        b, length, c = tokens.shape
        qkv = self.qkv(tokens).reshape(b, length, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def forward(
        self, windows: torch.Tensor, mask: torch.Tensor | None = None, prompts: torch.Tensor | None = None
    ) -> torch.Tensor:
        bw, n, c = windows.shape
        q, k, v = self._heads(windows)
        bias = self.position_bias()
        if prompts is not None:
            b, p = prompts.shape[:2]
            _, k_p, v_p = self._heads(prompts)  # [B, heads, P, d]; the prompts' queries are not needed
            per_window = (b, bw // b, self.num_heads, p, c // self.num_heads)
            k = torch.cat([k, k_p.unsqueeze(1).expand(per_window).reshape(bw, *per_window[2:])], dim=2)
            v = torch.cat([v, v_p.unsqueeze(1).expand(per_window).reshape(bw, *per_window[2:])], dim=2)
            bias = F.pad(bias, (0, p))
            mask = None if mask is None else F.pad(mask, (0, p))
        attn = (q * self.scale) @ k.transpose(-2, -1) + bias.unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.num_heads, n, -1) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(bw, self.num_heads, n, -1)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    """``fc1`` (C -> ratio*C), exact GELU, ``fc2`` (back to C)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinTransformerBlock(nn.Module):
    """``x + DropPath(W-MSA(LN1(x)))``, then ``x + DropPath(MLP(LN2(x)))``, on ``[B, H*W, C]`` tokens.

    Odd blocks (``shift > 0``) roll the map by ``-shift`` before partitioning (SW-MSA). The map is
    zero-padded after ``norm1`` to a multiple of the window and cropped back afterwards.
    ``extra_tokens`` is the VPT slot described in the module docstring.
    """

    def __init__(
        self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float, qkv_bias: bool, drop_path: float
    ) -> None:
        super().__init__()
        if not 0 <= shift < window:
            raise ValueError(f"shift must be in [0, window={window}), got {shift}")
        self.dim = dim
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads, qkv_bias)
        self.drop_path = StochasticDepth(drop_path, mode="row")  # per-sample, 1/keep scaling, training only
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.extra_tokens: PromptTokens | None = None

    def _prompts(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.extra_tokens is None:
            return None
        return self.norm1(checked_block_prompts(self.extra_tokens(x), x, self.dim))

    def forward(self, x: torch.Tensor, height: int, width: int, shift_mask: torch.Tensor | None) -> torch.Tensor:
        """``x`` ``[B, H*W, C]`` -> ``[B, H*W, C]``; ``shift_mask`` ``[nW, N, N]`` is used by shifted blocks."""
        b, length, c = x.shape
        if length != height * width:
            raise ValueError(f"expected {height}x{width}={height * width} tokens, got {length}")
        prompts = self._prompts(x)
        shortcut = x
        x = self.norm1(x).view(b, height, width, c)
        pad_r = (self.window - width % self.window) % self.window
        pad_b = (self.window - height % self.window) % self.window
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = x.shape[1:3]
        if self.shift > 0:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = self.attn(window_partition(x, self.window), shift_mask if self.shift > 0 else None, prompts)
        x = window_reverse(windows, self.window, hp, wp)
        if self.shift > 0:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x[:, :height, :width, :].reshape(b, length, c)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> one token: ``[B, H*W, C]`` -> ``[B, ceil(H/2)*ceil(W/2), 2C]``.

    [Q] Concatenation order x0=[0::2, 0::2], x1=[1::2, 0::2], x2=[0::2, 1::2], x3=[1::2, 1::2]
    (row offset varies fastest), then LayerNorm(4C) and a bias-free Linear(4C -> 2C). Other Swin
    ports (mmcv's unfold) order the four differently; official: ``PatchMerging.forward`` in microsoft/GLIP
    maskrcnn_benchmark/modeling/backbone/swint.py.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b, _, c = x.shape
        x = F.pad(x.view(b, height, width, c), (0, 0, 0, width % 2, 0, height % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class PatchEmbed(nn.Module):
    """Images ``[B, 3, H, W]`` -> tokens ``[B, ceil(H/4)*ceil(W/4), C]`` and the token grid size.

    The image is zero-padded right/bottom to a multiple of the patch size, then a stride-``patch``
    convolution and a LayerNorm over channels.
    """

    def __init__(self, patch: int, embed_dim: int, in_channels: int = 3) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        h, w = images.shape[-2:]
        images = F.pad(images, (0, -w % self.patch, 0, -h % self.patch))
        x = self.proj(images)
        height, width = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), height, width


class SwinStage(nn.Module):
    """One stage (official ``BasicLayer``): its blocks, then patch merging if it is not the last.

    ``forward(x [B, H*W, C], H, W)`` -> ``(stage output [B, H*W, C], next input, next H, next W)``;
    the stage output is taken before merging. The shift mask is built once per stage and call.
    ``checkpoint_blocks`` recomputes each block in the backward pass (no number changes).
    """

    checkpoint_blocks = False

    def __init__(self, blocks: list[SwinTransformerBlock], downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample
        self.window = blocks[0].window
        self.shift = self.window // 2

    def forward(self, x: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        padded_h = -(-height // self.window) * self.window
        padded_w = -(-width // self.window) * self.window
        mask = shifted_window_mask(padded_h, padded_w, self.window, self.shift, x.device)
        for block in self.blocks:
            if self.checkpoint_blocks and torch.is_grad_enabled():
                x = checkpoint(block, x, height, width, mask, use_reentrant=False)
            else:
                x = block(x, height, width, mask)
        if self.downsample is None:
            return x, x, height, width
        return x, self.downsample(x, height, width), (height + 1) // 2, (width + 1) // 2


class SwinTransformer(nn.Module):
    """GLIP's ``backbone.body``: ``forward(images [B, 3, H, W])`` -> 4 maps ``[B, C_i, ceil(H/4/2^i), ...]``.

    Stochastic depth rises linearly from 0 to ``config.drop_path_rate`` over all blocks and acts only
    in training. Freezing stages (``FREEZE_CONV_BODY_AT``) is left to tuning methods.
    """

    def __init__(self, config: SwinConfig) -> None:
        super().__init__()
        self.out_channels = config.stage_channels
        self.patch_embed = PatchEmbed(config.patch_size, config.embed_dim)
        rates = [r.item() for r in torch.linspace(0, config.drop_path_rate, sum(config.depths), device="cpu")]
        self.layers = nn.ModuleList()
        for i, (depth, heads, dim) in enumerate(zip(config.depths, config.num_heads, config.stage_channels)):
            first = sum(config.depths[:i])
            blocks = [
                SwinTransformerBlock(
                    dim, heads, config.window_size, 0 if j % 2 == 0 else config.window_size // 2,
                    config.mlp_ratio, config.qkv_bias, rates[first + j],
                )
                for j in range(depth)
            ]
            last = i == len(config.depths) - 1
            self.layers.append(SwinStage(blocks, None if last else PatchMerging(dim)))
        # [Q] Stage 0's output norm is an Identity for GLIP's *-RETINANET backbones (official swint.py,
        # SwinTransformer.__init__).
        self.norm0 = nn.Identity()
        for i, dim in enumerate(config.stage_channels[1:], start=1):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))

    def set_checkpointing(self, enabled: bool) -> None:
        """Recompute every block in the backward pass instead of keeping its activations."""
        for layer in self.layers:
            layer.checkpoint_blocks = enabled

    def blocks(self) -> list[VisionBlock]:
        """Every block in execution order with its stage and channel width (for prompt methods)."""
        listed = []
        for stage, layer in enumerate(self.layers):
            for block in layer.blocks:
                listed.append(VisionBlock(index=len(listed), stage=stage, channels=block.dim, module=block))
        return listed

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x, height, width = self.patch_embed(images)
        outputs = []
        for i, layer in enumerate(self.layers):
            out, x, next_h, next_w = layer(x, height, width)
            out = getattr(self, f"norm{i}")(out)
            outputs.append(out.view(-1, height, width, out.shape[-1]).permute(0, 3, 1, 2).contiguous())
            height, width = next_h, next_w
        return outputs

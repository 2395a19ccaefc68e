"""Tower module ``3i+2``: DyHead's vision path across pyramid levels (microsoft/GLIP
maskrcnn_benchmark/modeling/rpn/vldyhead.py, ``DyConv``).

For every level ``l`` (F_0..F_4 = P3..P7) one offset/mask map is predicted from F_l and shared by
up to three modulated deformable 3x3 convolutions: ``DyConv[1]`` on F_l, ``DyConv[2]`` (stride 2)
on the finer F_{l-1}, and ``DyConv[0]`` on the coarser F_{l+1}, upsampled to F_l's size. The terms
are weighted by a scale attention (DyFuse) and averaged, then passed through DyReLU.
State-dict names are the official ones: ``DyConv.{0,1,2}.{conv,bn}``, ``AttnConv.1``,
``relu.fc.{0,2}``, ``offset``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torchvision.ops import DeformConv2d, deform_conv2d

from bench.models.glip.text_features import TextFeatures

OFFSET_CHANNELS = 18  # (Δy, Δx) for each of the 9 taps, tap k = i*3+j at channels 2k, 2k+1
MASK_CHANNELS = 9


def h_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Hard sigmoid ``relu6(x + 3) / 6``, as in DyHead."""
    return F.relu6(x + 3) / 6


def row_grid(delta: torch.Tensor, row: int, stride: tuple[int, int], padding: tuple[int, int],
             size: tuple[int, int]) -> torch.Tensor:
    """Where the taps of kernel row ``i`` of a deformable convolution read its input, as ``grid_sample``'s grid.

    Tap ``(i, j)`` of output ``(h, w)`` reads the ``size``-sized input at ``(h * s - p + i + Δy,
    w * s - p + j + Δx)`` (dilation 1); ``delta`` ``[B, kw, 2, H', W']`` holds the row's ``(Δy, Δx)``
    (offset channels ``2k, 2k + 1`` of tap ``k = i * kw + j``, torchvision's layout). Returns
    ``[B, kw * H', W', 2]``, ``(x, y)`` normalised for ``align_corners=False``, where zero padding gives
    torchvision's zero-outside bilinear weights.
    """
    kw, (out_h, out_w), (height, width) = delta.shape[1], delta.shape[-2:], size
    options = dict(dtype=delta.dtype, device=delta.device)
    y = torch.arange(out_h, **options).view(out_h, 1) * stride[0] + (row - padding[0]) + delta[:, :, 0]
    x = (torch.arange(out_w, **options) * stride[1] + torch.arange(kw, **options).view(kw, 1, 1) - padding[1]
         + delta[:, :, 1])
    grid = torch.stack(((2 * x + 1) / width - 1, (2 * y + 1) / height - 1), dim=-1)  # [B, kw, H', W', 2]
    return grid.view(delta.shape[0], kw * out_h, out_w, 2)


class SampledDeformConv(torch.autograd.Function):
    """torchvision's modulated deformable convolution with a backward built on ``grid_sample``.

    The forward is torchvision's op (bit-identical outputs). Its backward
    (``torchvision::_deform_conv2d_backward``) always computes every gradient, the weight's included
    (``backward_gradient_parameters`` runs unconditionally, pytorch/vision
    torchvision/csrc/ops/cpu/deform_conv2d_kernel.cpp), and its CPU im2col runs on one thread. This
    backward computes only what ``needs_input_grad`` asks, one kernel row at a time
    (:func:`_sampling_grads`): the input, offset and mask gradients with ``grid_sample``'s backward,
    the weight gradient as one contraction of the output gradient with the row's bilinear samples, the
    bias gradient as a sum. On a 2-core CPU a GLIP-T-sized DyConv (256 channels) runs forward and
    backward with its weight gradient about 3x faster than with torchvision's backward; the
    gradients agree to float rounding (``tests/test_glip_gradients.py``).
    Extra arguments: ``stride`` and ``padding`` pairs; dilation 1 and one weight and offset group, as in DyHead.
    """

    @staticmethod
    def forward(ctx, x, offset, mask, weight, bias, stride, padding):
        ctx.save_for_backward(x, offset, mask, weight)
        ctx.stride, ctx.padding = stride, padding
        return deform_conv2d(x, offset, weight, bias, stride=stride, padding=padding, mask=mask)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, offset, mask, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad[:4]
        sampled = (_sampling_grads(grad, (x, offset, mask), needs, weight, ctx.stride, ctx.padding)
                   if any(needs) else (None,) * 4)
        bias_grad = grad.sum((0, 2, 3)) if ctx.needs_input_grad[4] else None
        return (*sampled, bias_grad, None, None)


def _sampling_grads(grad: torch.Tensor, inputs: tuple[torch.Tensor, ...], needs: tuple[bool, ...], weight: torch.Tensor,
                    stride: tuple[int, int], padding: tuple[int, int]) -> tuple[torch.Tensor | None, ...]:
    """Gradients of ``(x, offset, mask, weight)`` given the output's ``grad`` (``inputs`` = ``(x, offset,
    mask)``), None where ``needs`` asks for none.

    One kernel row at a time, so that the buffers of ``B * C * kw * H' * W'`` values stay about as
    large as torchvision's ``[C * kh * kw, B * H' * W']`` columns: the row's weight slice maps ``grad``
    onto the row's samples, the mask gets that times the samples summed over channels, the weight's
    row gets ``grad`` contracted with the masked samples, and ``grid_sample``'s backward gives the
    input and the row's offset channels.
    """
    x, offset, mask = inputs
    need_x, need_offset, need_mask, need_weight = needs
    kh, kw = weight.shape[-2:]
    row_deltas = offset.reshape(offset.shape[0], kh, kw, 2, *offset.shape[-2:]).unbind(1)  # [B, kw, 2, H', W'] each
    x = x.detach().requires_grad_(need_x)
    x_grad = torch.zeros_like(x) if need_x else None
    weight_grad = torch.empty_like(weight) if need_weight else None
    offset_grads, mask_grads = [], []
    for row, (row_delta, row_mask) in enumerate(zip(row_deltas, mask.chunk(kh, 1))):
        sample_grad = torch.einsum("ocj,bohw->bcjhw", weight[:, :, row], grad)  # [B, C, kw, H', W']
        with torch.enable_grad(), torch.autocast(grad.device.type, enabled=False):
            delta = row_delta.detach().requires_grad_(need_offset)
            samples = F.grid_sample(x, row_grid(delta, row, stride, padding, x.shape[-2:]), mode="bilinear",
                                    padding_mode="zeros", align_corners=False).view_as(sample_grad)
        if need_mask:
            mask_grads.append((sample_grad * samples.detach()).sum(1))
        if need_weight:
            weight_grad[:, :, row] = torch.einsum("bohw,bcjhw->ocj", grad, samples.detach() * row_mask[:, None])
        wanted = [t for t in (x, delta) if t.requires_grad]
        if wanted:
            row_grads = iter(torch.autograd.grad(samples, wanted, sample_grad.mul_(row_mask[:, None])))
            if need_x:
                x_grad += next(row_grads)
            if need_offset:
                offset_grads.append(next(row_grads).flatten(1, 2))
    return (x_grad, torch.cat(offset_grads, 1) if need_offset else None,
            torch.cat(mask_grads, 1) if need_mask else None, weight_grad)


def modulated_deform_conv(conv: DeformConv2d, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``conv(x, offset, mask)``, through :class:`SampledDeformConv` when a backward may follow.

    torchvision's own op stays in use without gradients, and on CUDA for a trained weight (its
    backward there is not the single-threaded im2col; the sampled one is unmeasured on GPUs) and under
    ``torch.use_deterministic_algorithms``, where ``grid_sample``'s backward has no deterministic
    kernel and raises (torchvision's CUDA backward accumulates with ``atomicAdd`` too, but does not
    check).
    """
    if not torch.is_grad_enabled() or (x.is_cuda and (conv.weight.requires_grad or torch.are_deterministic_algorithms_enabled())):
        return conv(x, offset, mask)
    return SampledDeformConv.apply(x, offset, mask, conv.weight, conv.bias, conv.stride, conv.padding)


class Conv3x3Norm(nn.Module):
    """Modulated deformable 3x3 convolution (padding 1, bias) followed by GroupNorm.

    ``forward(x [B, C, H, W], offset [B, 18, H', W'], mask [B, 9, H', W'])`` -> ``[B, C, H', W']``
    with ``H' = ceil(H / stride)``. Runs in float32 like the official op (``custom_fwd(cast_inputs=
    float32)``); ``torchvision.ops.deform_conv2d`` has the same offset layout and zero-outside
    bilinear sampling as GLIP's CUDA kernel. With ``deformable=False`` (GLIP's ``USE_DFCONV False``)
    the convolution is a plain 3x3 ``Conv2d`` under the same parameter names, and ``offset`` and
    ``mask`` are None: on a CPU the deformable backward costs most of a small model's step. The backward computes only
    the gradients asked for, with ``grid_sample`` (:func:`modulated_deform_conv`).
    """

    def __init__(self, channels: int, stride: int, gn_groups: int, deformable: bool = True) -> None:
        super().__init__()
        conv = DeformConv2d if deformable else nn.Conv2d
        self.conv = conv(channels, channels, kernel_size=3, stride=stride, padding=1)
        self.bn = nn.GroupNorm(gn_groups, channels)

    def forward(self, x: torch.Tensor, offset: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        if offset is None:
            return self.bn(self.conv(x))
        dtype = torch.promote_types(self.conv.weight.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            return self.bn(modulated_deform_conv(self.conv, x.to(dtype), offset.to(dtype), mask.to(dtype)))


class DyReLU(nn.Module):
    """Dynamic ReLU with two learned linear pieces per channel, from the map's global average.

    ``x`` ``[B, C, H, W]`` -> ``max(x * a1 + b1, x * a2 + b2)`` per channel, where
    ``h_sigmoid(fc(mean(x)))`` gives ``(a1, b1, a2, b2)`` after GLIP's re-centring: ``a1`` around 1,
    ``a2`` around 0 (DYReLU defaults lambda_a 1.0 -> scale 2, init_a (1, 0), init_b (0, 0)).
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        squeeze = channels // reduction  # DYReLU's reduction == 4 branch: no rounding to a multiple of 4
        self.channels = channels
        self.fc = nn.Sequential(nn.Linear(channels, squeeze), nn.ReLU(), nn.Linear(squeeze, 4 * channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        coeffs = h_sigmoid(self.fc(F.adaptive_avg_pool2d(x, 1).view(b, c))).view(b, 4 * c, 1, 1)
        a1, b1, a2, b2 = torch.split(coeffs, self.channels, dim=1)
        return torch.max(x * ((a1 - 0.5) * 2 + 1) + (b1 - 0.5), x * ((a2 - 0.5) * 2) + (b2 - 0.5))


def reinterpret_offsets(offset: torch.Tensor, mask: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[Q] Offsets/masks of a finer level read as if they belonged to a ``height x width`` output.

    ``DyConv[0]`` runs on the coarser level with the offsets predicted for the current one. GLIP's
    CUDA kernel does not check shapes: it reads the first ``18*h*w`` offset and ``9*h*w`` mask
    floats of each image's buffer (microsoft/GLIP maskrcnn_benchmark/csrc/cuda/deform_conv_kernel_cuda.cu,
    ``modulated_deformable_im2col_gpu_kernel``; called from ``DyConv.forward`` in rpn/vldyhead.py). ``offset``
    ``[B, 18, H, W]``, ``mask`` ``[B, 9, H, W]`` -> ``[B, 18, h, w]``, ``[B, 9, h, w]``.
    """
    b = offset.shape[0]
    area = height * width
    off = offset.reshape(b, -1)[:, : OFFSET_CHANNELS * area].reshape(b, OFFSET_CHANNELS, height, width)
    msk = mask.reshape(b, -1)[:, : MASK_CHANNELS * area].reshape(b, MASK_CHANNELS, height, width)
    return off, msk


class DyConv(nn.Module):
    """One DyHead vision block over all pyramid levels.

    ``forward(visual, text)``: ``visual`` is a list of ``[B, C, H_l, W_l]`` maps, each level half the
    size (rounded up) of the previous one, as after padding to /32; returns maps of the same shapes.
    ``text`` passes through unchanged. Without deformable convolutions there is no ``offset`` layer.
    """

    def __init__(self, channels: int, gn_groups: int, deformable: bool = True) -> None:
        super().__init__()
        # Index = official position: 0 for the coarser level, 1 for the same level, 2 (stride 2) for the finer one.
        self.DyConv = nn.ModuleList([Conv3x3Norm(channels, stride, gn_groups, deformable) for stride in (1, 1, 2)])
        self.AttnConv = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, 1, kernel_size=1), nn.ReLU())
        self.relu = DyReLU(channels)
        self.offset = (nn.Conv2d(channels, OFFSET_CHANNELS + MASK_CHANNELS, kernel_size=3, padding=1)
                       if deformable else None)

    def _level(self, visual: list[torch.Tensor], level: int) -> torch.Tensor:
        feature = visual[level]
        offset = mask = coarse_offset = coarse_mask = None
        if self.offset is not None:
            offset_mask = self.offset(feature)  # predicted from the CURRENT level, shared by all terms
            offset, mask = offset_mask[:, :OFFSET_CHANNELS], offset_mask[:, OFFSET_CHANNELS:].sigmoid()
        terms = [self.DyConv[1](feature, offset, mask)]
        if level > 0:
            terms.append(self.DyConv[2](visual[level - 1], offset, mask))
        if level < len(visual) - 1:
            coarser = visual[level + 1]
            if offset is not None:
                coarse_offset, coarse_mask = reinterpret_offsets(offset, mask, *coarser.shape[-2:])
            coarse = self.DyConv[0](coarser, coarse_offset, coarse_mask)
            # F.upsample_bilinear in the official code, i.e. align_corners=True [Q].
            terms.append(F.interpolate(coarse, size=feature.shape[-2:], mode="bilinear", align_corners=True))
        # DyFuse: scale attention per term, then the mean over the 2 or 3 terms.
        weights = h_sigmoid(torch.stack([self.AttnConv(term) for term in terms]))  # [n, B, 1, 1, 1]
        return self.relu(torch.mean(torch.stack(terms) * weights, dim=0))

    def forward(self, visual: list[torch.Tensor], text: TextFeatures) -> tuple[list[torch.Tensor], TextFeatures]:
        return [self._level(visual, level) for level in range(len(visual))], text

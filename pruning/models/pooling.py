"""Adaptive average pooling that ONNX can export at any input size.

``torch.onnx.export`` turns ``adaptive_avg_pool2d`` into a fixed ``AveragePool`` and refuses when the input
size is not a multiple of the output size ("output size that are not factor of input size"): torchvision's
VGG pools its features to 7x7, so a VGG fed 64x64 images (2x2 features) cannot be exported.

``ExportableAdaptiveAvgPool2d`` computes the same windows as PyTorch's adaptive pooling (Lin et al. 2013's
global pooling generalised: output cell i averages input rows ``[floor(i*n/m), ceil((i+1)*n/m))``), separably
along H then W, as a few gathers, products and sums (ONNX ``Gather``/``Mul``/``Add``). Where the sizes divide it
calls ``F.adaptive_avg_pool2d`` itself, so trained behaviour at the usual sizes is bit-identical; elsewhere the
result equals it up to float rounding (sum of weighted taps instead of sum then divide). No parameters: a model's
state_dict is unchanged by the swap.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def adaptive_windows(size_in: int, size_out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling windows ``[start, end)`` of each of ``size_out`` output cells."""
    return [((i * size_in) // size_out, -(-((i + 1) * size_in) // size_out)) for i in range(size_out)]


def window_taps(size_in: int, size_out: int) -> tuple[list[list[int]], list[list[float]]]:
    """The windows as K taps: ``index[k][i]`` and ``weight[k][i]`` so that
    ``out[i] = sum_k weight[k][i] * x[index[k][i]]`` (K = the widest window; short windows get weight 0)."""
    windows = adaptive_windows(size_in, size_out)
    taps = max(end - start for start, end in windows)
    index = [[min(start + k, end - 1) for start, end in windows] for k in range(taps)]
    weight = [[1.0 / (end - start) if start + k < end else 0.0 for start, end in windows] for k in range(taps)]
    return index, weight


def _pool_axis(x: torch.Tensor, dim: int, size_out: int) -> torch.Tensor:
    """Adaptive average along one spatial axis (``dim`` = -2 or -1) of x [N, C, H, W]."""
    index, weight = window_taps(int(x.shape[dim]), size_out)
    view = (-1, 1) if dim == -2 else (1, -1)
    out = None
    for idx, wts in zip(index, weight):
        tap = x.index_select(dim, torch.tensor(idx, device=x.device))                  # [N, C, m, W] or [N, C, H, m]
        term = tap * torch.tensor(wts, dtype=x.dtype, device=x.device).view(view)
        out = term if out is None else out + term
    return out


class ExportableAdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` that exports to ONNX for any input size (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.output_size if isinstance(self.output_size, tuple) else (self.output_size, self.output_size)
        height, width = int(x.shape[-2]), int(x.shape[-1])
        out_h = height if size[0] is None else size[0]
        out_w = width if size[1] is None else size[1]
        if height % out_h == 0 and width % out_w == 0:
            return F.adaptive_avg_pool2d(x, (out_h, out_w))
        return _pool_axis(_pool_axis(x, -2, out_h), -1, out_w)                          # [N, C, out_h, out_w]

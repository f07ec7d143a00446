"""The ArcFace and CosFace heads in plain PyTorch: the reference of ``bench_heads.py``.

The textbook dense head, as InsightFace writes it: normalize embeddings and class
centres, one (B, C) cosine matrix, the margin on the target cosine only, scale,
cross-entropy, and autograd for the gradients w.r.t. the embeddings and W. Only
``bench_heads.py`` imports this module, and only when PyTorch is installed (the
``benchmarks`` extra); faceloss_jax itself never needs PyTorch.
"""

import math
import os
from typing import Callable

import torch
from torch.nn import functional as F


def _arcface_target(cos_y: torch.Tensor, margin: float) -> torch.Tensor:
    """cos(θ + m), falling back to cos θ − m·sin m where θ + m > π (InsightFace)."""
    sin_y = torch.sqrt(torch.clamp(1.0 - cos_y * cos_y, min=0.0))
    phi = cos_y * math.cos(margin) - sin_y * math.sin(margin)
    return torch.where(cos_y > math.cos(math.pi - margin), phi, cos_y - margin * math.sin(margin))


_TARGETS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "arcface": _arcface_target,
    "cosface": lambda cos_y, margin: cos_y - margin,
}


def head_loss(
    x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, *, loss: str, scale: float, margin: float
) -> torch.Tensor:
    """Mean margin-softmax loss of embeddings ``x`` (B, d) against centres ``w`` (d, C)."""
    cos = F.normalize(x, dim=1) @ F.normalize(w, dim=0)
    cos_y = cos.gather(1, y[:, None])
    logits = cos.scatter(1, y[:, None], _TARGETS[loss](cos_y, margin))
    return F.cross_entropy(scale * logits, y)


def make_step(
    *, loss: str, batch: int, num_classes: int, dim: int, scale: float, margin: float
) -> Callable[[], None]:
    """Random inputs and a call that runs forward + backward (w.r.t. x and w) once."""
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    x = torch.randn(batch, dim, requires_grad=True)
    w = torch.randn(dim, num_classes, requires_grad=True)
    y = torch.randint(0, num_classes, (batch,))

    def step():
        value = head_loss(x, w, y, loss=loss, scale=scale, margin=margin)
        torch.autograd.grad(value, (x, w))

    return step

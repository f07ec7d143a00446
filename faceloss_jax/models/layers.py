"""Building blocks shared by the backbones: PReLU, bias-free convolutions, batch norm.

Convolutions pad explicitly by ``kernel_size // 2`` on both sides, as PyTorch's
``padding=k // 2`` does, so a stride-2 layer maps H to ceil(H / 2) and samples the same
positions as the reference implementations (XLA's "SAME" would pad (0, 1) instead).
"""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype

# He initialization (fan_out, untruncated normal): torch.nn.init.kaiming_normal_, as in
# torchvision's ResNet and InsightFace's MobileFaceNet.
HE_NORMAL = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# arcface_torch's iResNet: every Conv2d weight ~ N(0, 0.1²) (``nn.init.normal_(w, 0, 0.1)``).
ARCFACE_TORCH_CONV_INIT = nn.initializers.normal(0.1)


class PReLU(nn.Module):
    """Parametric ReLU with one learnable slope per channel (He et al., ICCV 2015).

    ``f(x) = x`` for ``x >= 0`` and ``a_c · x`` otherwise, ``a_c`` initialized to 0.25 as in
    Caffe and PyTorch (``nn.PReLU(num_parameters=C)``). The slope is stored in
    ``param_dtype`` and applied in the dtype of the input.

    Attributes:
      negative_slope_init: initial value of every slope.
      param_dtype: dtype of the slope parameter.
    """

    negative_slope_init: float = 0.25
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        slope = self.param(
            "negative_slope",
            nn.initializers.constant(self.negative_slope_init),
            (x.shape[-1],),
            self.param_dtype,
        )
        return jnp.where(x >= 0, x, jnp.asarray(slope, x.dtype) * x)


def conv(
    features: int,
    kernel_size: int,
    *,
    strides: int = 1,
    groups: int = 1,
    dtype: Dtype,
    kernel_init: nn.initializers.Initializer = HE_NORMAL,
    **kwargs: Any,
) -> nn.Conv:
    """A bias-free square convolution with PyTorch padding ``kernel_size // 2``."""
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=strides,
        padding=kernel_size // 2,
        feature_group_count=groups,
        use_bias=False,
        dtype=dtype,
        kernel_init=kernel_init,
        **kwargs,
    )


class BatchNorm(nn.BatchNorm):
    """``nn.BatchNorm`` with PyTorch's running variance as an option.

    Both normalize a training batch with its biased variance ``σ²_B = mean((x − μ_B)²)``.
    They differ in the running average: Flax stores ``m·v + (1 − m)·σ²_B``, PyTorch
    (``nn.BatchNorm2d``, hence arcface_torch) the unbiased ``m·v + (1 − m)·σ²_B·n/(n − 1)``,
    n the number of reduced values (over all devices of ``axis_name``). With
    ``unbiased_variance`` the update is PyTorch's: from the Flax update ``v'``,
    ``v' + (v' − m·v)/(n − 1)``. Variable names and the default behaviour are those of
    ``nn.BatchNorm``, so checkpoints are interchangeable.

    Attributes:
      unbiased_variance: update the running variance with ``n/(n − 1)·σ²_B``.
    """

    unbiased_variance: bool = False

    @nn.compact
    def __call__(
        self, x: jax.Array, use_running_average: bool | None = None, *, mask=None
    ) -> jax.Array:
        use_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        correct = self.unbiased_variance and not use_average and not self.is_initializing()
        if correct and mask is not None:
            raise ValueError("unbiased_variance does not support a mask")
        old_var = self.get_variable("batch_stats", "var") if correct else None
        y = super().__call__(x, use_running_average, mask=mask)
        if correct:
            n = math.prod(x.shape[:-1])
            if self.axis_name is not None:
                n = n * jax.lax.psum(1, self.axis_name)
            new_var = self.get_variable("batch_stats", "var")
            self.put_variable(
                "batch_stats", "var", new_var + (new_var - self.momentum * old_var) / (n - 1)
            )
        return y


def batch_norm(
    *, train: bool, dtype: Dtype, axis_name: str | None, unbiased_variance: bool = False
) -> functools.partial:
    """BatchNorm with PyTorch's defaults (momentum 0.1, i.e. flax 0.9; epsilon 1e-5).

    Args:
      train: normalize with the batch statistics and update the running averages in
        the "batch_stats" collection; otherwise normalize with the running averages.
      dtype: computation dtype (the statistics are reduced in float32 regardless).
      axis_name: a named device axis over which to average the batch statistics
        (synchronized BN under ``pmap``/``shard_map``), or None for per-device BN.
      unbiased_variance: PyTorch's running variance (see ``BatchNorm``).

    Returns:
      A constructor of ``BatchNorm`` (an ``nn.BatchNorm``) with those settings.
    """
    return functools.partial(
        BatchNorm,
        unbiased_variance=unbiased_variance,
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=dtype,
        axis_name=axis_name,
    )


def check_images(images: jax.Array) -> None:
    """Raises ValueError unless ``images`` is a floating (B, H, W, C) batch."""
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, H, W, C); got shape {images.shape}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"images must be floating point (normalized); got dtype {images.dtype}")

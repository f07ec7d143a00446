"""iResNet, the face ResNet of InsightFace (ArcFace, CVPR 2019; arcface_torch/backbones).

Deng, Guo, Xue, Zafeiriou. "ArcFace: Additive Angular Margin Loss for Deep Face
Recognition", CVPR 2019, Sec. 3 ("improved residual unit" BN-Conv-BN-PReLU-Conv-BN and the
"E" output structure BN-Dropout-FC-BN); the layer counts are those of InsightFace's
``iresnet.py``.
"""

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype

from faceloss_jax.models.layers import (
    ARCFACE_TORCH_CONV_INIT,
    HE_NORMAL,
    PReLU,
    batch_norm,
    check_images,
    conv,
)

STAGE_WIDTHS = (64, 128, 256, 512)
STAGE_SIZES = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}


class IBasicBlock(nn.Module):
    """The improved residual unit: ``x + BN(conv3×3/s(PReLU(BN(conv3×3(BN(x))))))``.

    The stride sits on the second convolution; the shortcut is conv1×1/s + BN when the
    stride or the width changes, the identity otherwise.

    Attributes:
      features: output channels.
      strides: stride of the second convolution and of the shortcut.
      conv: constructor of a convolution, ``conv(features, kernel_size, strides=...)``.
      norm: constructor of a BatchNorm layer.
    """

    features: int
    strides: int
    conv: Callable[..., nn.Module]
    norm: Callable[..., nn.Module]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.norm()(x)
        y = self.conv(self.features, 3)(y)
        y = self.norm()(y)
        y = PReLU()(y)
        y = self.conv(self.features, 3, strides=self.strides)(y)
        y = self.norm()(y)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = self.conv(self.features, 1, strides=self.strides, name="downsample_conv")(x)
            x = self.norm(name="downsample_bn")(x)
        return x + y


class IResNet(nn.Module):
    """InsightFace's iResNet: stem, four stride-2 stages of IBasicBlocks, BN-Dropout-FC-BN.

    ``112×112×3 → conv3×3 64 + BN + PReLU → stages (64, 128, 256, 512) → 7×7×512 → BN →
    flatten → Dropout → FC(embedding_dim) → BN``. Any input size works; the flattened size
    is ``512·⌈H/16⌉·⌈W/16⌉`` (2×2×512 at 32×32).

    The final BN has no learnable scale: InsightFace fixes ``features.weight`` to 1
    (``requires_grad=False``), so here it is ``BatchNorm(use_scale=False)`` and the
    parameter count is InsightFace's minus ``embedding_dim``. As InsightFace's fp16 mode
    does, the body computes in ``dtype`` and the FC and the final BN in float32.

    Two options make a run match arcface_torch step for step (both off by default):
    ``arcface_torch_init`` initializes as its ``IResNet.__init__`` does (every convolution
    ~ N(0, 0.1²); the FC as ``nn.Linear``: weight and bias ~ U(±1/√fan_in); BatchNorm
    scale 1, bias 0 and PReLU 0.25 as here), instead of He-normal convolutions and a
    LeCun-normal FC with zero bias; ``unbiased_bn_variance`` updates the BatchNorm running
    variances with the unbiased batch variance, as PyTorch does (``layers.BatchNorm``).
    Parameter names map one to one onto arcface_torch's ``state_dict``
    (``faceloss_jax.weights``).

    Attributes:
      stage_sizes: number of blocks of each of the four stages.
      embedding_dim: width of the embedding (512 in InsightFace).
      dropout: dropout rate before the FC (InsightFace: 0, or 0.4 for small data sets);
        uses the "dropout" rng when ``train`` is true.
      dtype: computation dtype of the body (parameters are float32).
      bn_axis_name: named device axis for synchronized batch statistics, or None.
      arcface_torch_init: initialize as arcface_torch (see above).
      unbiased_bn_variance: PyTorch's unbiased running variance in every BatchNorm.
    """

    stage_sizes: Sequence[int]
    embedding_dim: int = 512
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    bn_axis_name: str | None = None
    arcface_torch_init: bool = False
    unbiased_bn_variance: bool = False

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        """Embeds a batch of images.

        Args:
          images: float (B, H, W, C) images, 112×112×3 for faces.
          train: normalize with batch statistics (updating "batch_stats", which must
            then be mutable) and apply dropout; otherwise use the running averages.

        Returns:
          float32 embeddings of shape (B, embedding_dim).
        """
        check_images(images)
        kernel_init = ARCFACE_TORCH_CONV_INIT if self.arcface_torch_init else HE_NORMAL
        conv_ = functools.partial(conv, dtype=self.dtype, kernel_init=kernel_init)
        norm = batch_norm(
            train=train,
            dtype=self.dtype,
            axis_name=self.bn_axis_name,
            unbiased_variance=self.unbiased_bn_variance,
        )
        x = conv_(STAGE_WIDTHS[0], 3)(images.astype(self.dtype))
        x = norm()(x)
        x = PReLU()(x)
        for stage, (width, num_blocks) in enumerate(zip(STAGE_WIDTHS, self.stage_sizes)):
            for block in range(num_blocks):
                x = IBasicBlock(
                    width,
                    strides=2 if block == 0 else 1,
                    conv=conv_,
                    norm=norm,
                    name=f"stage{stage + 1}_block{block}",
                )(x)
        x = norm()(x)
        x = x.reshape(x.shape[0], -1).astype(jnp.float32)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.Dense(self.embedding_dim, **self._dense_init(x.shape[-1]))(x)
        head_norm = batch_norm(
            train=train,
            dtype=jnp.float32,
            axis_name=self.bn_axis_name,
            unbiased_variance=self.unbiased_bn_variance,
        )
        return head_norm(use_scale=False, name="features")(x)

    def _dense_init(self, fan_in: int) -> dict[str, nn.initializers.Initializer]:
        """The FC's initializers: Flax's defaults, or ``nn.Linear``'s U(±1/√fan_in)."""
        if not self.arcface_torch_init:
            return {}
        bound = 1.0 / fan_in**0.5
        return {
            "kernel_init": nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
            "bias_init": lambda key, shape, dtype=jnp.float32: jax.random.uniform(
                key, shape, dtype, -bound, bound
            ),
        }
